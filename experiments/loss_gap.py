"""Fig. 1: the statistical separation. The true score does not minimize the training loss.

Prop. 4.1 says the training-loss gap between the true score and the empirical score
is a Fisher divergence, Loss-Gap_t = E_{P_hat_t}||grad log p_hat_t - grad log p_t||^2,
and Thm 4.3 says it grows like d/sigma_t^2 + tr(Sigma) at small t. We measure it on
the paper's mixture (§6.1: K = 8 components N(mu_k, Sigma), mu_k ~ N(0, 4 I_d)):

  (a) Loss-Gap_t against t for several n, both estimators of Prop. 4.1 with 95% bands
      over datasets, beside the small-t closed form sum_j a^2 lam_j/(s^2(a^2 lam_j + s^2));
      shaded: Thm 4.3's small-t window if it ends at sigma_t = d^(-1/2);
  (b) against d, and (c) against the data variance tr(Sigma), at fixed t, with the ceiling
      d/sigma_t^2 that bounds E_D[Loss-Gap_t] for any data and the shape d/sigma_t^2 + tr(Sigma);
  (d) Lemma C.1: the empirical score's Lipschitz constant against t, searched at the
      midpoints of close training pairs and measured under P_hat_t, between the lemma's
      bounds, and the true score's Hessian norm, which stays O(1);
  (e) the gap relative to the closed form against n, beside Thm 4.3's n^(-1/d): flat while
      the empirical posterior is one-hot (small t), falling faster at larger t;
  (f) the gap integrated over [t0, T] against n, beside d log(1/t0)-type closed form.

facts() and blocks() turn the JSON into the named numbers and tables that README.md and
paper_notes/ quote (figures/claims.py).

Run: python -m experiments.loss_gap [--profile smoke|quick|paper] [--set key=value] [--force]
"""

from __future__ import annotations

import inspect
import sys

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.lines import Line2D
from tqdm import tqdm

from experiments.common.plotting import COLORS, band, new_figure, positive, save_figure
from experiments.common.runs import Units, main, resolve_device
from experiments.common.stats import (
    format_interval,
    format_number,
    markdown_table,
    slope_interval,
)
from theory.bounds import (
    gaussian_hessian_norm,
    integrated_small_t_gap,
    lemma_c1_bounds,
    small_t_gap,
    thm43_rate,
)
from theory.empirical import EmpiricalScore
from theory.loss_gap import dataset_mean, integrated_loss_gap, loss_gap
from theory.mixtures import GaussianMixture, paper_mixture
from theory.process import forward_sample, generator

NAME = "loss_gap"

# -- configuration ----------------------------------------------------------------------------
# Fig. 1's exact setting is not published (PAPER.md §5); ours is the paper's §6.1 mixture.
# Each (panel, setting, dataset) is one resumable unit with its own random stream.
PROFILES = {
    "smoke": {
        "seed": 0, "device": "cpu", "dtype": "float64", "d": 8, "K": 4, "mean_std": 2.0,
        "ns": [20, 80], "t_min": 1e-3, "t_max": 3.0, "num_times": 5,
        "num_draws": 128, "num_datasets": 2,
        "dims": [4, 8], "cov_scales": [0.5, 2.0], "t_fixed": [0.05, 0.5], "n_fixed": 40,
        "lipschitz_n": 40, "lipschitz_pairs": 4, "lipschitz_draws": 16,
        "t0": 1e-3, "T": 3.0, "num_nodes": 4, "ratio_times": [0.01, 0.3],
    },
    "quick": {
        "seed": 0, "device": "cpu", "dtype": "float64", "d": 32, "K": 8, "mean_std": 2.0,
        "ns": [30, 100, 300, 1000, 3000, 10000], "t_min": 1e-3, "t_max": 3.0, "num_times": 13,
        "num_draws": 2048, "num_datasets": 8,
        "dims": [8, 16, 32, 64], "cov_scales": [0.0625, 0.25, 1.0, 4.0, 16.0],
        "t_fixed": [0.05, 0.5], "n_fixed": 1000,
        "lipschitz_n": 1000, "lipschitz_pairs": 64, "lipschitz_draws": 256,
        "t0": 1e-3, "T": 3.0, "num_nodes": 16, "ratio_times": [0.01, 0.1, 0.3, 1.0],
    },
    "paper": {
        "seed": 0, "device": "auto", "dtype": "float64", "d": 32, "K": 8, "mean_std": 2.0,
        "ns": [30, 100, 300, 1000, 3000, 10000, 30000, 100000], "t_min": 1e-3, "t_max": 3.0,
        "num_times": 25, "num_draws": 8192, "num_datasets": 16,
        "dims": [8, 16, 32, 64, 128, 256], "cov_scales": [0.015625, 0.0625, 0.25, 1.0, 4.0, 16.0],
        "t_fixed": [0.01, 0.05, 0.5], "n_fixed": 1000,
        "lipschitz_n": 1000, "lipschitz_pairs": 256, "lipschitz_draws": 1024,
        "t0": 1e-3, "T": 3.0, "num_nodes": 32, "ratio_times": [0.01, 0.1, 0.3, 1.0],
    },
}


def mixture_for(config: dict, d: int, cov_scale: float = 1.0) -> GaussianMixture:
    """The paper's mixture at dimension d with Sigma = cov_scale * I, on the run's device."""
    m = paper_mixture(d, config["K"], config["mean_std"], cov=cov_scale, seed=config["seed"])
    return m.to(resolve_device(config["device"]), getattr(torch, config["dtype"]))


# -- (a, b, c, e, f) Loss-Gap_t on one training set ---------------------------------------------


def gaps_on_dataset(mixture: GaussianMixture, n: int, times, num_draws: int, g) -> dict:
    """Both estimators of Loss-Gap_t at each time, on one training set of n points."""
    points = mixture.sample(n, g)
    emp = EmpiricalScore(points)
    gaps = [loss_gap(mixture, points, float(t), num_draws, g, emp) for t in times]
    return {
        form: {
            "value": [getattr(x, form).value for x in gaps],
            "stderr": [getattr(x, form).stderr for x in gaps],
        }
        for form in ("direct", "fisher")
    }


def over_datasets(units: Units, key: str, stream: tuple[int, ...], config: dict, fn) -> dict:
    """Run fn(generator) on num_datasets training sets; mean and 95% t-interval per entry.

    fn returns {form: {"value": [...], "stderr": [...]}}; dataset r of this setting
    draws from the random stream (seed, *stream, r), so any unit can be redone alone.
    """
    runs = [
        units.get(f"{key}/r={r}", lambda r=r: fn(generator(config["seed"], *stream, r)))
        for r in range(config["num_datasets"])
    ]
    out = {}
    for form in runs[0]:
        per_entry = np.array([run[form]["value"] for run in runs])  # (datasets, entries)
        stats = [dataset_mean(per_entry[:, j]) for j in range(per_entry.shape[1])]
        out[form] = {
            "mean": [s.mean for s in stats],
            "ci_low": [s.ci_low for s in stats],
            "ci_high": [s.ci_high for s in stats],
        }
    if "direct" in out:  # Prop 4.1: per-dataset |direct - fisher| in joint standard errors
        z = [
            np.abs(np.subtract(run["direct"]["value"], run["fisher"]["value"]))
            / np.hypot(run["direct"]["stderr"], run["fisher"]["stderr"])
            for run in runs
        ]
        out["max_abs_z_direct_vs_fisher"] = float(np.max(z))
    return out


def integrated_on_dataset(mixture: GaussianMixture, n: int, config: dict, g) -> dict:
    """int_{t0}^{T} Loss-Gap_t dt on one training set (Fisher form, Gauss-Legendre in log t)."""
    points = mixture.sample(n, g)
    est, _, _ = integrated_loss_gap(
        mixture, points, config["t0"], config["T"], config["num_nodes"], config["num_draws"], g)
    return {"fisher": {"value": [est.value], "stderr": [est.stderr]}}


# -- (d) Lemma C.1: Lipschitz constants ------------------------------------------------------------


def closest_pairs(points: torch.Tensor, m: int, chunk: int = 1024) -> torch.Tensor:
    """Indices (m, 2) of the m pairs with the smallest distance, among nearest-neighbour pairs."""
    best_d, best_j = [], []
    for lo in range(0, points.shape[0], chunk):
        dist = torch.cdist(points[lo : lo + chunk], points)
        dist[torch.arange(dist.shape[0]), torch.arange(lo, lo + dist.shape[0])] = float("inf")
        dmin, j = dist.min(dim=1)
        best_d.append(dmin)
        best_j.append(j)
    dmin, j = torch.cat(best_d), torch.cat(best_j)
    i = torch.argsort(dmin)[: 2 * m]  # each pair appears twice (i->j and j->i)
    pairs = {tuple(sorted((int(a), int(b)))) for a, b in zip(i, j[i], strict=True)}
    return torch.tensor(sorted(pairs, key=lambda p: float(dmin[p[0]]))[:m])


def spectral_norms(hessians: torch.Tensor) -> torch.Tensor:
    """||H||_2 of symmetric matrices (batch, d, d): the largest |eigenvalue|, shape (batch,)."""
    return torch.linalg.eigvalsh(hessians).abs().amax(dim=-1)


def lipschitz_at(mixture: GaussianMixture, config: dict, times, g) -> dict:
    """Hessian norms: empirical score searched and under P_hat_t; true score under P_t."""
    points = mixture.sample(config["lipschitz_n"], g)
    emp = EmpiricalScore(points)
    pairs = closest_pairs(points, config["lipschitz_pairs"])
    midpoints = 0.5 * (points[pairs[:, 0]] + points[pairs[:, 1]])  # at X_0 scale
    k = config["lipschitz_draws"]
    out = {key: [] for key in ("searched", "emp_mean", "emp_max", "true_mean", "true_max")}
    for t in tqdm(times, desc="Lemma C.1", leave=False):
        t = float(t)
        a = float(np.exp(-t / 2))
        idx = torch.randint(points.shape[0], (k,), generator=g).to(points.device)
        x_emp, _ = forward_sample(points[idx], t, g)  # draws from P_hat_t
        x_true, _ = forward_sample(mixture.sample(k, g), t, g)  # draws from P_t
        searched = spectral_norms(emp.hessian(a * midpoints, t))
        under = spectral_norms(emp.hessian(x_emp, t))
        true = spectral_norms(mixture.hessian(x_true, t))
        out["searched"].append(float(torch.maximum(searched.max(), under.max())))
        out["emp_mean"].append(float(under.mean()))
        out["emp_max"].append(float(under.max()))
        out["true_mean"].append(float(true.mean()))
        out["true_max"].append(float(true.max()))
    lower, upper = lemma_c1_bounds(points.cpu(), np.asarray(times))
    out["lemma_lower"], out["lemma_upper"] = lower.tolist(), upper.tolist()
    return out


# -- the whole figure ---------------------------------------------------------------------------


def check_config(config: dict) -> None:
    """Relations between keys (run before any work; single keys: experiments/common/config.py)."""
    if not config["t_min"] <= SMALL_T:
        raise ValueError(f"config t_min must be <= {SMALL_T} (the closed-form checks compare "
                         f"the gap at t <= {SMALL_T}), got {config['t_min']}")


def compute(config: dict, units: Units) -> dict:
    """Every number Fig. 1 shows; units cache finished (setting, dataset) pairs."""
    d = config["d"]
    times = np.geomspace(config["t_min"], config["t_max"], config["num_times"])
    base = mixture_for(config, d)
    lam = base.cov_eigvals.cpu().numpy()
    draws = config["num_draws"]
    result: dict = {"times": times, "closed_form": small_t_gap(times, lam),
                    "thm43_rate": thm43_rate(times, d, base.trace_cov)}

    # Panels as (kind, value); the pair (kind index, value index) names the random stream.
    kinds = {
        "n": config["ns"], "d": config["dims"], "var": config["cov_scales"], "int": config["ns"]
    }
    jobs = [(k, i, kind, v) for k, (kind, vs) in enumerate(kinds.items()) for i, v in enumerate(vs)]
    by_n, by_d, by_var, integrated = {}, {}, {}, {}
    bar = tqdm(jobs, desc="Fig. 1 settings")
    for k, i, kind, value in bar:
        bar.set_postfix_str(f"{kind}={value}")
        key, stream = f"{kind}={value}", (k, i)
        if kind == "n":  # (a) the gap against t, one curve per n
            by_n[value] = over_datasets(
                units, key, stream, config,
                lambda g, n=value: gaps_on_dataset(base, n, times, draws, g))
        elif kind == "d":  # (b) against d at fixed small t
            mix = mixture_for(config, value)
            by_d[value] = over_datasets(
                units, key, stream, config,
                lambda g, m=mix: gaps_on_dataset(m, config["n_fixed"], config["t_fixed"], draws, g))
            by_d[value]["closed_form"] = small_t_gap(np.asarray(config["t_fixed"]), 1.0, value)
        elif kind == "var":  # (c) against tr(Sigma) at fixed small t
            mix = mixture_for(config, d, value)
            by_var[value] = over_datasets(
                units, key, stream, config,
                lambda g, m=mix: gaps_on_dataset(m, config["n_fixed"], config["t_fixed"], draws, g))
            by_var[value]["trace_cov"] = mix.trace_cov
            by_var[value]["closed_form"] = small_t_gap(np.asarray(config["t_fixed"]), value, d)
        else:  # (f) integrated over [t0, T] by Gauss-Legendre quadrature in log t
            integrated[value] = over_datasets(
                units, key, stream, config,
                lambda g, n=value: integrated_on_dataset(base, n, config, g))
    result.update(by_n=by_n, by_d=by_d, by_var=by_var, integrated=integrated)
    result["integrated_closed_form"] = integrated_small_t_gap(config["t0"], config["T"], lam)

    # (d) Lemma C.1 on one training set
    result["lipschitz"] = units.get(
        "lipschitz", lambda: lipschitz_at(base, config, times, generator(config["seed"], 99)))
    result["gaussian_hessian_norm"] = gaussian_hessian_norm(times, lam)
    result["checks"] = closed_form_checks(result)
    return result


def closed_form_checks(result: dict) -> dict:
    """Acceptance numbers: relative error to the closed form for t <= 0.3; monotonicity in t."""
    times = np.asarray(result["times"])
    small = times <= 0.3
    checks = {}
    for n, entry in result["by_n"].items():
        fisher = np.asarray(entry["fisher"]["mean"])
        rel = np.abs(fisher / np.asarray(result["closed_form"]) - 1)
        checks[str(n)] = {
            "max_rel_err_t_le_0.3": float(rel[small].max()),
            "decreasing_in_t": bool(np.all(np.diff(fisher) < 0)),
            "max_abs_z_direct_vs_fisher": entry["max_abs_z_direct_vs_fisher"],
        }
    return checks


# -- named numbers and tables for the notes (figures/claims.py) -----------------------------------
# Every measured number of README.md and paper_notes/ on Fig. 1 is one of these, or a path
# into figures/loss_gap.json; `python -m figures.claims` writes them into the prose.

SMALL_T = 0.3  # "small t" of the notes and of closed_form_checks
CI_LEVEL = inspect.signature(dataset_mean).parameters["level"].default  # of every band


def sigma2(t) -> np.ndarray:
    """sigma_t^2 = 1 - e^(-t) (float64, any shape)."""
    return -np.expm1(-np.asarray(t, dtype=float))


def window_edge(d: int, gamma: float = 0.5) -> float:
    """The t with sigma_t = d^(-gamma). Thm 4.3 holds for t in [t0, t1] with log sigma_t1 =
    O(-log d), i.e. sigma_t <= d^(-gamma) for some gamma > 0 the paper leaves open; the figure
    shades gamma = 1/2 as an illustration, not as the theorem's constant."""
    return float(-np.log1p(-(float(d) ** (-2 * gamma))))


def window_exponent(t: float, d: int) -> float:
    """gamma with sigma_t = d^(-gamma): how deep into the small-t window t lies at dimension d."""
    return float(-0.5 * np.log(sigma2(t)) / np.log(d))


def n_slopes(result: dict) -> list:
    """Per time, the least-squares slope of log E_D[Loss-Gap_t] on log n with its t-interval
    (stats.slope_interval; each n has its own training sets, so the points are independent).
    Empty when fewer than 3 values of n were run."""
    r = result["results"]
    ns = list(r["by_n"])
    if len(ns) < 3:
        return []
    x = np.log([float(n) for n in ns])
    y = np.log([r["by_n"][n]["fisher"]["mean"] for n in ns])  # (n, t)
    return [slope_interval(x, y[:, k]) for k in range(y.shape[1])]


def _panel_rows(result: dict):
    """(d, t, mean, ci_low) of every measured E_D[gap] in panels (a), (b), (c)."""
    r, cfg = result["results"], result["config"]
    for entry in r["by_n"].values():
        for k, t in enumerate(r["times"]):
            yield cfg["d"], t, entry["fisher"]["mean"][k], entry["fisher"]["ci_low"][k]
    for key in ("by_d", "by_var"):
        for x, entry in r[key].items():
            d = int(x) if key == "by_d" else cfg["d"]
            for j, t in enumerate(cfg["t_fixed"]):
                yield d, t, entry["fisher"]["mean"][j], entry["fisher"]["ci_low"][j]


def facts(result: dict) -> dict[str, float]:
    """Named numbers of Fig. 1 that the notes quote (figures/claims.py binds them)."""
    r, cfg = result["results"], result["config"]
    d, ns = cfg["d"], list(r["by_n"])
    times = np.asarray(r["times"], dtype=float)
    small = times <= SMALL_T
    cf, rate = np.asarray(r["closed_form"]), np.asarray(r["thm43_rate"])
    fisher = {n: np.asarray(r["by_n"][n]["fisher"]["mean"]) for n in ns}
    direct = {n: np.asarray(r["by_n"][n]["direct"]["mean"]) for n in ns}
    out: dict[str, float] = {"ci_level": CI_LEVEL}

    # (a) against the closed form and the rate shape d/sigma^2 + tr Sigma
    for n in ns:
        out[f"closed_form_rel_err/n={n}"] = float(np.abs(fisher[n] / cf - 1)[small].max())
        for k in range(times.size):
            out[f"ratio_cf/n={n}/k={k}"] = float(fisher[n][k] / cf[k])
    out["closed_form_rel_err_max"] = max(out[f"closed_form_rel_err/n={n}"] for n in ns)
    out["rate_ratio_min_small_t"] = float(min((fisher[n] / rate)[small].min() for n in ns))

    # (a, e) dependence on n: fitted exponent against Thm 4.3's n^(-1/d)
    n_lo, n_hi = float(ns[0]), float(ns[-1])
    out["neg_inv_d"] = -1.0 / d
    out["n_ratio"] = n_hi / n_lo
    out["rate_drop_predicted"] = 1.0 - (n_hi / n_lo) ** (-1.0 / d)
    slopes = n_slopes(result)
    for k, s in enumerate(slopes):
        out[f"slope_n/k={k}"], out[f"slope_n_low/k={k}"] = s.value, s.low
        out[f"slope_n_high/k={k}"] = s.high
    if slopes:
        out["slope_n_bound_max_small_t"] = max(
            max(abs(s.low), abs(s.high)) for s, keep in zip(slopes, small, strict=True) if keep)

    # Prop 4.1: direct vs Fisher. Where the empirical posterior is one-hot both forms are the
    # same number per draw (their difference is 2<s - s_hat, s_hat + eps/sigma>, and
    # s_hat = -eps/sigma there), so only the larger t test the proposition.
    z = [r["by_n"][n]["max_abs_z_direct_vs_fisher"] for n in ns]
    out["max_z"], out["max_z_min_over_n"] = max(z), min(z)
    rel = np.array([np.abs(direct[n] / fisher[n] - 1) for n in ns])  # (n, t)
    out["means_rel_diff_max_small_t"] = float(rel[:, small].max())
    for k in range(times.size):
        out[f"means_rel_diff_max/k={k}"] = float(rel[:, k].max())

    # (b, c) fixed t; the ceiling d/sigma_t^2 and the small-t window
    for j, t in enumerate(cfg["t_fixed"]):
        ceiling = d / float(sigma2(t))
        by_var = list(r["by_var"].values())
        m = np.array([e["fisher"]["mean"][j] for e in by_var])
        c_f = np.array([e["closed_form"][j] for e in by_var])
        out[f"ceiling/j={j}"] = ceiling
        out[f"window_gamma/j={j}"] = window_exponent(t, d)
        out[f"sigma2/j={j}"] = float(sigma2(t))
        out[f"var_cf_rel_err_max/j={j}"] = float(np.abs(m / c_f - 1).max())
        out[f"gap_var_min/j={j}"], out[f"gap_var_max/j={j}"] = float(m[0]), float(m[-1])
        out[f"cf_var_min/j={j}"], out[f"cf_var_max/j={j}"] = float(c_f[0]), float(c_f[-1])
        out[f"rate_var_max/j={j}"] = ceiling + by_var[-1]["trace_cov"]
        out[f"gap_over_ceiling_var_max/j={j}"] = float(m[-1]) / ceiling
        m_d = np.array([e["fisher"]["mean"][j] for e in r["by_d"].values()])
        c_d = np.array([e["closed_form"][j] for e in r["by_d"].values()])
        out[f"d_cf_rel_err_max/j={j}"] = float(np.abs(m_d / c_d - 1).max())
    out["trace_cov_min"] = float(next(iter(r["by_var"].values()))["trace_cov"])
    out["trace_cov_max"] = float(list(r["by_var"].values())[-1]["trace_cov"])
    out["window_edge_half"] = window_edge(d, 0.5)
    # E_D[Loss-Gap_t] <= population DSM loss of the true score = d/sigma^2 - J(P_t) < d/sigma^2
    rows = list(_panel_rows(result))
    out["ceiling_frac_max"] = max(mean * float(sigma2(t)) / dd for dd, t, mean, _ in rows)
    out["ceiling_ci_low_frac_max"] = max(low * float(sigma2(t)) / dd for dd, t, _, low in rows)

    # (f) integrated
    integ = [r["integrated"][n]["fisher"]["mean"][0] for n in ns]
    out["d_log_inv_t0"] = d * float(np.log(1.0 / cfg["t0"]))
    out["integrated_drop"] = 1.0 - integ[-1] / integ[0]

    # (d) Lemma C.1
    lip = r["lipschitz"]
    searched = np.asarray(lip["searched"])
    s2, a2 = sigma2(times), np.exp(-times)
    for k in range(times.size):
        out[f"lip_drop/k={k}"] = float(searched[0] / searched[k])
        out[f"sigma4_ratio/k={k}"] = float((s2[k] / s2[0]) ** 2)
        out[f"a2_over_sigma4_ratio/k={k}"] = float((a2[0] / s2[0] ** 2) / (a2[k] / s2[k] ** 2))
        out[f"alpha2_excess/k={k}"] = float(a2[0] / a2[k] - 1)
    lower, upper = np.asarray(lip["lemma_lower"]), np.asarray(lip["lemma_upper"])
    positive_lower = lower > 0
    out["lemma_lower_positive_t_max"] = float(times[positive_lower].max())
    outside = (searched < lower) | (searched > upper)
    out["band_violations"] = float(np.sum(outside[positive_lower]))
    out["true_norm_max_before_T"] = float(np.max(lip["true_max"][:-1]))
    return out


def blocks(result: dict) -> dict[str, str]:
    """Generated markdown tables of Fig. 1 for the notes (figures/claims.py writes them)."""
    r, cfg = result["results"], result["config"]
    d, ns = cfg["d"], list(r["by_n"])
    times = np.asarray(r["times"], dtype=float)
    cf = np.asarray(r["closed_form"])
    fmt = format_number
    ci = f"[{CI_LEVEL:.0%} CI]"
    out = {}

    slopes = n_slopes(result)
    if slopes:
        out["n_slopes"] = markdown_table(
            ["t", "gamma: sigma_t = d^(−gamma)", f"slope of log gap on log n {ci}",
             f"contains −1/d = {fmt(-1 / d, '.3f')}",
             f"gap / closed form, n = {ns[0]} → {int(ns[-1]):,}"],
            [[fmt(float(t), ".3g"), fmt(window_exponent(t, d), ".2f"),
              format_interval(s.value, s.low, s.high, ".4f"),
              "yes" if s.contains(-1 / d) else "no",
              " → ".join(fmt(r["by_n"][n]["fisher"]["mean"][k] / cf[k], ".3f")
                         for n in (ns[0], ns[-1]))]
             for k, (t, s) in enumerate(zip(times, slopes, strict=True))])

    rel = [[abs(r["by_n"][n]["direct"]["mean"][k] / r["by_n"][n]["fisher"]["mean"][k] - 1)
            for n in ns] for k in range(times.size)]
    out["prop41_means"] = markdown_table(
        ["t", f"max over n of |direct − Fisher| / Fisher (means over {cfg['num_datasets']} sets)"],
        [[fmt(float(t), ".3g"), fmt(max(rel[k]), ".1e")] for k, t in enumerate(times)])

    def interval(entry, j, spec):
        f = entry["fisher"]
        return format_interval(f["mean"][j], f["ci_low"][j], f["ci_high"][j], spec)

    t_fixed = cfg["t_fixed"]
    out["by_d"] = markdown_table(
        ["d"] + [h for t in t_fixed for h in (f"t = {t}: measured {ci}", "closed form")],
        [[x] + [v for j in range(len(t_fixed))
                for v in (interval(e, j, ",.1f"), fmt(e["closed_form"][j], ",.1f"))]
         for x, e in r["by_d"].items()])

    out["by_var"] = markdown_table(
        ["tr Sigma"] + [h for t in t_fixed for h in
                        (f"t = {t}: measured {ci}", "closed form", "d/sigma_t² + tr Sigma")],
        [[fmt(float(e["trace_cov"]), "g")]
         + [v for j, t in enumerate(t_fixed)
            for v in (interval(e, j, ",.2f"), fmt(e["closed_form"][j], ",.2f"),
                      fmt(d / float(sigma2(t)) + e["trace_cov"], ",.1f"))]
         for e in r["by_var"].values()])

    out["integrated"] = markdown_table(
        ["n", f"int Loss-Gap_t dt {ci}", "closed form"],
        [[f"{int(n):,}", interval(r["integrated"][n], 0, ".2f"),
          fmt(r["integrated_closed_form"], ".2f")] for n in ns])

    run, paper = cfg, PROFILES["paper"]  # this run's own config beside the paper profile

    def listed(values, spec=","):
        return ", ".join(fmt(v, spec) if isinstance(v, float) else f"{v:,}" for v in values)

    def traces(p):
        return [p["d"] * c for c in p["cov_scales"]]

    out["settings"] = markdown_table(
        ["", f"{result['profile']} (committed figure)", "paper"],
        [[label, get(run), get(paper)] for label, get in (
            ("d, K", lambda p: f"{p['d']}, {p['K']}"),
            ("n (panels a, e, f)", lambda p: listed(p["ns"])),
            ("times", lambda p: f"{p['num_times']} log-spaced in "
                                f"[{fmt(p['t_min'], 'g')}, {fmt(p['t_max'], 'g')}]"),
            ("draws per (t, training set)", lambda p: f"{p['num_draws']:,}"),
            ("training sets per setting", lambda p: str(p["num_datasets"])),
            ("panel b: d", lambda p: f"{listed(p['dims'])} at n = {p['n_fixed']:,}"),
            ("panel c: Sigma = c I", lambda p: f"c = {listed(p['cov_scales'], 'g')} "
                                               f"(tr Sigma = {listed(traces(p), 'g')})"),
            ("panels b, c: t", lambda p: listed(p["t_fixed"], "g")),
            ("panel d: n, closest pairs, draws",
             lambda p: f"{p['lipschitz_n']:,}, {p['lipschitz_pairs']}, {p['lipschitz_draws']:,}"),
            ("panel f: [t0, T], Gauss–Legendre nodes in log t",
             lambda p: f"[{fmt(p['t0'], 'g')}, {fmt(p['T'], 'g')}], {p['num_nodes']}"),
            ("dtype, device", lambda p: f"{p['dtype']}, {p['device']}"),
        )])
    return out


# -- drawing from the JSON -------------------------------------------------------------------------


def plot(result: dict, stem) -> list:
    """Fig. 1 as a 2 x 3 panel figure, drawn from the stored numbers only."""
    r, cfg = result["results"], result["config"]
    times = np.asarray(r["times"])
    fig, axes = new_figure(2, 3, width=10.5, height=3.0)

    ax = axes[0, 0]  # (a)
    ns = list(r["by_n"])
    for i, n in enumerate(ns):
        c = colormaps["viridis"](i / max(1, len(ns) - 1))
        f, dct = r["by_n"][n]["fisher"], r["by_n"][n]["direct"]
        band(ax, times, f["mean"], f["ci_low"], f["ci_high"], c, label=f"n = {n}")
        ax.plot(times, dct["mean"], ls="none", marker="o", mfc="none", color=c, ms=3.5)
    closed = r"$\sum_j \alpha^2\lambda_j/(\sigma^2(\alpha^2\lambda_j+\sigma^2))$"
    ax.plot(times, r["closed_form"], "k--", lw=1, label=closed)
    # Thm 4.3's window log sigma_t1 = O(-log d) has no stated constant: gamma = 1/2 shown.
    ax.axvspan(times[0], window_edge(cfg["d"], 0.5), color="0.9", zorder=0,
               label=r"Thm 4.3 window if $\sigma_t \leq d^{-1/2}$")
    ax.set(xscale="log", yscale="log", xlabel="t", ylabel=r"Loss-Gap$_t$",
           title=f"(a) gap vs t (d={cfg['d']}, K={cfg['K']}); line: Fisher, o: direct")
    ax.legend(ncol=1, loc="lower left")

    for ax, key, xlabel, title in (
        (axes[0, 1], "by_d", "d", "(b) gap vs dimension"),
        (axes[0, 2], "by_var", r"tr($\Sigma$)", f"(c) gap vs data variance (d={cfg['d']})"),
    ):
        xs = list(r[key])
        xv = np.array([r[key][x].get("trace_cov", float(x)) for x in xs], dtype=float)
        for j, t in enumerate(cfg["t_fixed"]):
            f = r[key]
            mean = [f[x]["fisher"]["mean"][j] for x in xs]
            lo = [f[x]["fisher"]["ci_low"][j] for x in xs]
            hi = [f[x]["fisher"]["ci_high"][j] for x in xs]
            gamma = window_exponent(t, cfg["d"])
            ax.errorbar(xv, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)],
                        marker="o", color=COLORS[j],
                        label=rf"t = {t} ($\sigma_t = d^{{-{gamma:.2f}}}$)")
            ax.plot(xv, [f[x]["closed_form"][j] for x in xs], ls="--", color=COLORS[j], lw=1)
            if key == "by_var":  # the ceiling d/sigma^2 and Thm 4.3's shape d/sigma^2 + tr Sigma
                ceiling = cfg["d"] / float(sigma2(t))
                ax.axhline(ceiling, ls=":", color=COLORS[j], lw=1)
                ax.plot(xv, ceiling + xv, ls="-.", color=COLORS[j], lw=0.8)
        styles = [("k", "--", "closed form")]
        if key == "by_var":
            styles += [("k", ":", r"$d/\sigma_t^2$ (no gap exceeds it)"),
                       ("k", "-.", r"$d/\sigma_t^2 + \mathrm{tr}\,\Sigma$ (Thm 4.3 shape)")]
            ax.text(0.02, 0.98, f"t = {cfg['t_fixed'][-1]} lies outside Thm 4.3's small-t window."
                    "\nAt every t the gap saturates at " r"$d/\sigma_t^2$, "
                    r"not $d/\sigma_t^2 + \mathrm{tr}\,\Sigma$",
                    transform=ax.transAxes, ha="left", va="top", fontsize=6.5)
        handles, labels = ax.get_legend_handles_labels()
        for color, ls, label in styles:
            handles.append(Line2D([], [], color=color, ls=ls, lw=1))
            labels.append(label)
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=r"Loss-Gap$_t$",
               title=f"{title}, n = {cfg['n_fixed']}")
        if key == "by_var":
            ax.set_ylim(top=ax.get_ylim()[1] * 10)  # room for the note on the regime
        ax.set_xticks(xv, [f"{x:g}" for x in xv], minor=False)
        ax.minorticks_off()
        ax.legend(handles, labels, loc="lower right", fontsize=6.5)

    ax = axes[1, 0]  # (d)
    lip = r["lipschitz"]
    ax.fill_between(times, positive(lip["lemma_lower"]), lip["lemma_upper"], color="0.88")
    ax.plot(times, lip["lemma_upper"], color="0.45", lw=1, label="Lemma C.1 upper bound")
    ax.plot(times, positive(lip["lemma_lower"]), color="0.45", lw=1, ls="--",
            label="Lemma C.1 lower bound (where > 0)")
    ax.plot(times, lip["searched"], "o-", color=COLORS[3], label="empirical, searched sup")
    ax.plot(times, lip["emp_mean"], "-", color=COLORS[1], label=r"empirical, mean under $\hat P_t$")
    ax.plot(times, lip["true_max"], "s-", color=COLORS[2], ms=3, label=r"true, max under $P_t$")
    ax.plot(times, r["gaussian_hessian_norm"], "k:",
            label=r"Gaussian: $1/(\sigma^2+\alpha^2\lambda_{min})$")
    ax.set(xscale="log", yscale="log", xlabel="t", ylabel=r"$\|\nabla^2 \log p_t\|_2$",
           title=f"(d) Lipschitz constants, n = {cfg['lipschitz_n']}")
    ax.legend(loc="upper right")

    ax = axes[1, 1]  # (e)
    nv = np.array([float(n) for n in ns])
    for j, t in enumerate(cfg["ratio_times"]):
        k = int(np.argmin(np.abs(np.log(times / t))))
        cf = r["closed_form"][k]
        mean = np.array([r["by_n"][n]["fisher"]["mean"][k] for n in ns]) / cf
        lo = np.array([r["by_n"][n]["fisher"]["ci_low"][k] for n in ns]) / cf
        hi = np.array([r["by_n"][n]["fisher"]["ci_high"][k] for n in ns]) / cf
        ax.errorbar(nv, mean, yerr=[mean - lo, hi - mean], marker="o", color=COLORS[j],
                    label=f"t = {times[k]:.3g}")
    ax.axhline(1.0, color="k", ls="--", lw=1)
    ax.plot(nv, (nv / nv[0]) ** (-1.0 / cfg["d"]), color="0.5", ls=":",
            label=r"$(n/n_{min})^{-1/d}$ (Thm 4.3's rate)")
    ax.set(xscale="log", xlabel="n", ylabel="gap / closed form",
           title="(e) against n: flat while the posterior is one-hot")
    ax.legend()

    ax = axes[1, 2]  # (f)
    integ = r["integrated"]
    mean = np.array([integ[n]["fisher"]["mean"][0] for n in ns])
    lo = np.array([integ[n]["fisher"]["ci_low"][0] for n in ns])
    hi = np.array([integ[n]["fisher"]["ci_high"][0] for n in ns])
    ax.errorbar(nv, mean, yerr=[mean - lo, hi - mean], marker="o", color=COLORS[0],
                label="measured")
    ax.axhline(r["integrated_closed_form"], color="k", ls="--", lw=1,
               label="closed form: " + r"$\sum_j[\log(e^t-1)-\log(e^t-1+\lambda_j)]_{t_0}^{T}$")
    ax.set(xscale="log", xlabel="n", ylabel=r"$\int_{t_0}^{T}$ Loss-Gap$_t\,dt$",
           title=f"(f) integrated gap, t0 = {cfg['t0']:g}, T = {cfg['T']:g}")
    ax.legend(loc="lower left")

    fig.tight_layout()
    return save_figure(fig, stem)


if __name__ == "__main__":
    main(sys.modules[__name__])
