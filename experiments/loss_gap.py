"""Fig. 1: the statistical separation. The true score does not minimize the training loss.

Prop. 4.1 says the training-loss gap between the true score and the empirical score
is a Fisher divergence, Loss-Gap_t = E_{P_hat_t}||grad log p_hat_t - grad log p_t||^2,
and Thm 4.3 says it grows like d/sigma_t^2 + tr(Sigma) at small t. We measure it on
the paper's mixture (§6.1: K = 8 components N(mu_k, Sigma), mu_k ~ N(0, 4 I_d)):

  (a) Loss-Gap_t against t for several n, both estimators of Prop. 4.1 with 95% bands
      over datasets, beside the small-t closed form sum_j a^2 lam_j/(s^2(a^2 lam_j + s^2));
  (b) against d, and (c) against the data variance tr(Sigma), at fixed small t;
  (d) Lemma C.1: the empirical score's Lipschitz constant against t, searched at the
      midpoints of close training pairs and measured under P_hat_t, between the lemma's
      bounds, and the true score's Hessian norm, which stays O(1);
  (e) the gap relative to the closed form against n (it vanishes only slowly in n);
  (f) the gap integrated over [t0, T] against n, beside d log(1/t0)-type closed form.

Run: python -m experiments.loss_gap [--profile smoke|quick|paper] [--set key=value] [--force]
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from matplotlib import colormaps
from tqdm import tqdm

from experiments.common.plotting import COLORS, band, new_figure, positive, save_figure
from experiments.common.runs import Units, main, resolve_device
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
            ax.errorbar(xv, mean, yerr=[np.subtract(mean, lo), np.subtract(hi, mean)],
                        marker="o", color=COLORS[j], label=f"measured, t = {t}")
            ax.plot(xv, [f[x]["closed_form"][j] for x in xs], ls="--", color=COLORS[j], lw=1,
                    label=f"closed form, t = {t}")
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=r"Loss-Gap$_t$",
               title=f"{title}, n = {cfg['n_fixed']}")
        ax.set_xticks(xv, [f"{x:g}" for x in xv], minor=False)
        ax.minorticks_off()
        ax.legend()

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
    ax.set(xscale="log", xlabel="n", ylabel="gap / closed form", title="(e) slow decay in n")
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
