"""Numbers in README.md and paper_notes/ bound to the results JSON they come from.

A statement is only as strong as its JSON, so no measured number in the prose is typed by
hand. Two ways to write one:

  inline   ``0.43%<!--loss_gap:closed_form_rel_err_max .2%-->``: the number, then an HTML
           comment (invisible on GitHub) naming its source and format. The source is
           ``stem:key``: ``figures/<stem>.json``, and ``key`` either a fact of that
           experiment (its module's ``facts(result) -> dict``: named numbers derived from
           the JSON) or a dotted path into the JSON (``results.table1.original.FD.0``;
           list items by index). Stem "suite" holds facts about the whole quick profile
           (wall times), stems "smallcnn_digits"/"smallcnn_cifar10" the shipped feature
           classifiers' records, "dit_pruning_rerun" a rerun of the DiT study with other
           float rounding (figures/reruns/) and how it compares ("vs_original/..."),
           "dit_pruning_cifar" the committed cifar_cpu profile (figures/cifar_cpu/),
           "width_vs_n_cpu" the committed cpu profile of width_vs_n (figures/cpu/),
           "mitigation_n64" the mitigation study's quick profile at n = 64 (figures/n64/).
           The format is Python's format spec, plus ``e``-formats
           written the short way (6.50e6, 1e-3), U+2212 for minus signs, an optional
           divisor in front ("/1e9 .3g": FLOP written as GFLOP) and suffix K or M at the
           end ("/1e3 .0fK": 566816 written as 567K).
  block    ``<!-- generated: stem:name -->`` ... ``<!-- /generated -->``: a whole
           markdown block (a table, a paragraph of numbers), the experiment module's
           ``blocks(result)[name]``.
  pilot    ``0.85<!--pilot-->``: a number from a pilot run whose JSON is not kept; the
           sentence must say it is a pilot. Allowed, never checked: use sparingly.

``python -m figures`` rewrites both from the JSON after it runs the experiments;
``python -m figures.claims --check`` (and the test suite) fails when

  - a bound number or block differs from what its JSON gives (stale or hand-edited);
  - a number stands in the prose unbound: every numeric token outside code, links,
    comments and generated blocks must be bound, be a setting of some result's config,
    a number of the paper (``PAPER_NUMBERS``, a snapshot of ../shared/paper/PAPER.md),
    part of a name (Thm 4.3, Fig. 3a, DiT-S/2, a year) or a small count (0-10).

So a hand-typed or stale number fails CI.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from experiments.common.runs import REPO_ROOT, atomic_write_bytes, read_json
from experiments.common.stats import MINUS, format_number
from figures import REGISTRY

__all__ = [
    "DOCUMENTS",
    "Problem",
    "format_number",
    "lookup",
    "render_text",
    "check_text",
    "render_all",
    "check_all",
]

FIGURES = REPO_ROOT / "figures"
DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "paper_notes").glob("*.md"))]
PAPER = REPO_ROOT.parent / "shared" / "paper" / "PAPER.md"

# A numeric token as the prose writes it: optional sign, digits with thousands commas, a
# fraction, a short exponent, a thousands/millions suffix (567K, 0.18M), a percent sign.
NUMBER = r"[-\u2212+]?\d[\d,]*(?:\.\d+)?(?:e[-\u2212+]?\d+)?[KM]?%?"
INLINE = re.compile(
    rf"(?P<num>{NUMBER})<!--(?P<stem>\w+):(?P<key>[\w.\-=/]+)(?: (?P<fmt>[^>]*?))?-->")
BLOCK = re.compile(r"(<!-- generated: (?P<stem>\w+):(?P<name>[\w.\-]+) -->\n)(?P<body>.*?)"
                   r"(<!-- /generated -->)", re.S)
TOKEN = re.compile(rf"(?<![\w.]){NUMBER}(?![\w])")
# Where a number is part of a name, not a measurement.
NAMES = re.compile(
    r"(?:Thm|Theorem|Prop|Proposition|Lemma|Fig|Figs|Figure|Table|Alg|Algorithm|Def|"
    r"Appendix|App|Section|eq|Eq|issue|Corollary|Remark|Assumption)\.?\s*[A-Z]?\d+(?:\.\d+)*[a-z]?"
    r"|§\s*\d+(?:\.\d+)*|\bC\.\d+|\bD\.\d+|\bDiT-[A-Z]+/\d+|\b(?:19|20)\d\d\b"
    r"|\b\d+-D\b|\b\d+\s*[×x]\s*\d+\b(?=\s*(?:pixels|images|px)?)|[⁰¹²³⁴⁵⁶⁷⁸⁹⁻]+"
    r"|Python\s*[≥>=]+\s*\d+\.\d+|\bv\d+|\b\d+/\d+\b|\bK = \d+|\bl\d\b|\bCIFAR-10\b"
    r"|\bInception-v3\b|\b[A-Za-z]+\d+\b"
)
# The numbers of the paper as ../shared/paper/PAPER.md states them (its numeric tokens), so
# that the check needs no file outside the repository; a test compares this snapshot with
# PAPER.md wherever that file is present.
PAPER_NUMBERS = frozenset({
    "-1", "-4", "0", "0.01", "0.02", "0.08", "0.09", "0.12", "0.25", "0.28", "0.3", "0.30",
    "0.33", "0.39", "0.77", "0.8", "0.94", "1", "1%", "1.12", "10", "1000", "100K", "10K",
    "11%", "12M", "15.07", "15.47", "16", "17%", "17.14", "1K", "2", "20%", "2019", "2021",
    "2023", "2025", "2026", "24K", "2511.03202", "3", "3.1", "3.2", "3.2K", "32", "35%", "4",
    "4.1", "4.3", "44M", "5", "5,000", "5.1", "500", "6", "6.1", "6.2", "61%", "66.87",
    "68.58", "7", "73.82", "8", "80%", "9", "9%", "92%", "99%",
})
PILOT = re.compile(rf"{NUMBER}<!--pilot-->")
SKIP = re.compile(r"```.*?```|`[^`\n]*`|<!--.*?-->|\]\([^)]*\)|https?://\S+", re.S)


@dataclass(frozen=True)
class Problem:
    """One disagreement between a document and the results: where, and what."""

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _normal(text: str) -> str:
    """A number as text with ASCII minus signs, for comparing."""
    return text.replace(MINUS, "-")


# -- where numbers come from ---------------------------------------------------------------------


@cache
def _modules() -> dict[str, Any]:
    return {m.NAME: m for m in (importlib.import_module(name) for name in REGISTRY)}


# Results that live outside figures/*.json: the shipped feature classifiers' records, and
# reruns of an experiment (figures/reruns/) compared with its committed result.
OTHER_SOURCES = {
    f"smallcnn_{name}": REPO_ROOT / "experiments" / "common" / "feature_nets"
    / f"smallcnn_{name}.json" for name in ("digits", "cifar10")
}
RERUNS = {"dit_pruning_rerun": ("dit_pruning", "reruns/dit_pruning_threads.json")}
# Committed results of a profile other than quick (runs.COMMITTED), with the facts and
# blocks of their experiment: stem -> (experiment NAME, path under figures/).
PROFILE_RESULTS = {"dit_pruning_cifar": ("dit_pruning", "cifar_cpu/dit_pruning.json"),
                   "width_vs_n_cpu": ("width_vs_n", "cpu/width_vs_n.json"),
                   "mitigation_n64": ("mitigation", "n64/mitigation.json")}


def _module_of(stem: str) -> Any:
    """The experiment module whose facts and blocks apply to ``stem`` (None if none)."""
    return _modules().get(PROFILE_RESULTS.get(stem, (stem,))[0])


def _load(stem: str, folder: Path) -> dict:
    path = OTHER_SOURCES.get(stem, folder / f"{stem}.json")
    if stem in RERUNS:
        path = folder / RERUNS[stem][1]
    if stem in PROFILE_RESULTS:
        path = folder / PROFILE_RESULTS[stem][1]
    if not path.exists():
        raise KeyError(f"no results file {path.relative_to(REPO_ROOT)} for '{stem}'")
    return read_json(path, "recompute it (python -m figures --force) or restore it from git")


class Sources:
    """The results JSON of every stem (loaded once) and its module's facts and blocks."""

    def __init__(self, folder: Path = FIGURES) -> None:
        self.folder = folder
        self._json: dict[str, dict] = {}
        self._facts: dict[str, dict] = {}
        self._blocks: dict[str, dict] = {}

    def json(self, stem: str) -> dict:
        """The stored result of ``stem`` (KeyError naming the file when there is none)."""
        if stem not in self._json:
            self._json[stem] = _load(stem, self.folder)
        return self._json[stem]

    def facts(self, stem: str) -> dict:
        """The named numbers of ``stem``: its module's facts(result), or {} without one."""
        if stem not in self._facts:
            if stem == "suite":
                self._facts[stem] = suite_facts(self)
            elif stem in RERUNS:  # the rerun's own facts, and how it sits against the original
                name = RERUNS[stem][0]
                module, rerun = _modules()[name], self.json(stem)
                self._facts[stem] = {**module.facts(rerun), **{
                    f"vs_original/{k}": v
                    for k, v in module.compare_rerun(self.json(name), rerun).items()}}
            else:
                fn: Callable | None = getattr(_module_of(stem), "facts", None)
                self._facts[stem] = fn(self.json(stem)) if fn else {}
        return self._facts[stem]

    def blocks(self, stem: str) -> dict:
        """The generated markdown blocks of ``stem``: its module's blocks(result), or {}."""
        if stem not in self._blocks:
            fn: Callable | None = getattr(_module_of(stem), "blocks", None)
            self._blocks[stem] = fn(self.json(stem)) if fn else {}
        return self._blocks[stem]


def suite_facts(sources: Sources) -> dict[str, float]:
    """Facts about the whole quick profile (stem "suite"): the wall time of each experiment
    in minutes ("minutes/<NAME>") and of all of them ("minutes/all"), as recorded in the
    results JSON when it was computed; and "rerun_coverage/S=<S>", the probability that
    the mean of an independent rerun over S new training seeds falls inside a 95%
    t-interval over S seeds: P(|T_{S-1}| <= t_{0.975, S-1} / sqrt(2)) (the difference of
    two means has sqrt(2) times the standard error of one)."""
    from scipy import stats

    out = {}
    for name in _modules():
        out[f"minutes/{name}"] = sources.json(name)["wall_time_s"] / 60
    out["minutes/all"] = sum(out.values())
    for S in (3, 5):
        q = stats.t.ppf(0.975, S - 1) / 2**0.5
        out[f"rerun_coverage/S={S}"] = float(stats.t.cdf(q, S - 1) - stats.t.cdf(-q, S - 1))
    return out


def lookup(sources: Sources, stem: str, key: str) -> float:
    """The number ``key`` of results ``stem``: a fact of its module, else a dotted path
    into its JSON (list items by index)."""
    facts = sources.facts(stem)
    if key in facts:
        return facts[key]
    node: Any = sources.json(stem)
    for part in key.split("."):
        if isinstance(node, list) and re.fullmatch(r"-?\d+", part):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(f"'{stem}:{key}': no fact of that name and no path ('{part}')")
    return node


# -- numbers allowed unbound --------------------------------------------------------------------


def _spellings(value: Any) -> Iterable[str]:
    """The ways prose writes a config value: 1000 -> 1000, 1,000, 1K; 0.001 -> 0.001, 1e-3."""
    if isinstance(value, dict):
        for v in value.values():
            yield from _spellings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _spellings(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        v = float(value)
        if v.is_integer():
            yield str(int(v))
            yield f"{int(v):,}"
            if v >= 1000 and v % 1000 == 0:
                yield f"{int(v) // 1000}K"
        else:
            yield repr(v)
            yield format(v, "g")
            yield format_number(v, ".0e")
            yield f"{v:.0%}"
            yield f"{v:g}".rstrip("0")


@cache
def allowed_numbers(folder: Path = FIGURES) -> frozenset[str]:
    """Numbers that may stand unbound: every config value of the results in ``folder`` and
    of every profile of the registered experiments, and every number of the paper
    (PAPER.md)."""
    out: set[str] = {"95%", "99%", "68%"}  # confidence levels: a choice, not a measurement
    for path in [*folder.glob("*.json"), *(folder / r for _, r in PROFILE_RESULTS.values())]:
        if not path.exists():
            continue
        stored = read_json(path, "recompute it (python -m figures --force) or restore it from git")
        out.update(_spellings(stored.get("config", {})))
        # a benchmark's targets (e.g. "<= 1.3 x the bare matmul") are settings too
        out.update(_spellings([t.get("bound") for t in stored.get("targets", {}).values()
                               if isinstance(t, dict)]))
    for module in _modules().values():  # the settings of every profile (smoke ... paper)
        out.update(_spellings(getattr(module, "PROFILES", {})))
    out.update(PAPER_NUMBERS)
    out.update(x.replace(",", "") for x in PAPER_NUMBERS)
    return frozenset(_normal(x) for x in out)


def paper_numbers(text: str) -> frozenset[str]:
    """The numeric tokens of a text as ``PAPER_NUMBERS`` holds them."""
    return frozenset(_normal(m.group()).rstrip(",") for m in TOKEN.finditer(text))


def _small_count(token: str) -> bool:
    return re.fullmatch(r"\d+", token) is not None and int(token) <= 10


def unbound_numbers(text: str, allowed: frozenset[str]) -> list[tuple[int, str]]:
    """(line, token) of every number in ``text`` that is neither bound, generated, in code,
    a name, a small count nor an allowed setting/paper number."""
    blanked = BLOCK.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    blanked = INLINE.sub(lambda m: " " * len(m.group(0)), blanked)
    blanked = PILOT.sub(lambda m: " " * len(m.group(0)), blanked)
    blanked = SKIP.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), blanked)
    blanked = NAMES.sub(lambda m: " " * len(m.group(0)), blanked)
    out = []
    for m in TOKEN.finditer(blanked):
        token = _normal(m.group()).rstrip(",")
        bare = token.rstrip("%")
        if _small_count(bare) or token in allowed or bare in allowed:
            continue
        if token.replace(",", "") in allowed:
            continue
        out.append((blanked.count("\n", 0, m.start()) + 1, m.group()))
    return out


# -- rendering and checking ---------------------------------------------------------------------


def _formatted(value: float, fmt: str | None) -> str:
    """format_number(value, fmt), where fmt may start with a divisor and end with a suffix
    K or M: "/1e9 .3g" writes 1327497216 as 1.33 (GFLOP from FLOP), "/1e3 .0fK" writes
    566816 as 567K."""
    suffix = ""
    if fmt and fmt.startswith("/"):
        scale, _, fmt = fmt[1:].partition(" ")
        value = value / float(scale)
    if fmt and fmt[-1] in "KM":
        fmt, suffix = fmt[:-1], fmt[-1]
    return format_number(value, fmt or None) + suffix


def render_text(text: str, sources: Sources) -> str:
    """``text`` with every bound number and generated block rewritten from the results.
    A tag whose source cannot be found is left as it is (``check_text`` reports it)."""

    def number(m: re.Match) -> str:
        try:
            value = _formatted(lookup(sources, m["stem"], m["key"]), m["fmt"])
        except (KeyError, TypeError, ValueError, IndexError):
            return m.group(0)
        return value + m.group(0)[len(m["num"]):]

    def block(m: re.Match) -> str:
        try:
            body = sources.blocks(m["stem"]).get(m["name"])
        except KeyError:
            body = None
        if body is None:
            return m.group(0)
        return m.group(1) + body.rstrip("\n") + "\n" + m.group(5)

    return INLINE.sub(number, BLOCK.sub(block, text))


def check_text(text: str, name: str, sources: Sources,
               allowed: frozenset[str] | None = None) -> list[Problem]:
    """Every disagreement of ``text`` (a document called ``name``) with the results."""
    problems = []

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    for m in BLOCK.finditer(text):
        try:
            body = sources.blocks(m["stem"]).get(m["name"])
        except KeyError as err:
            problems.append(Problem(name, line_of(m.start()), str(err)))
            continue
        if body is None:
            problems.append(Problem(name, line_of(m.start()),
                                    f"'{m['stem']}' has no generated block '{m['name']}'"))
        elif m["body"].rstrip("\n") != body.rstrip("\n"):
            problems.append(Problem(name, line_of(m.start()),
                                    f"block {m['stem']}:{m['name']} differs from its JSON "
                                    "(python -m figures.claims rewrites it)"))
    for m in INLINE.finditer(text):
        try:
            value = lookup(sources, m["stem"], m["key"])
            want = _formatted(value, m["fmt"])
        except (KeyError, TypeError, ValueError, IndexError) as err:
            problems.append(Problem(name, line_of(m.start()), str(err)))
            continue
        if _normal(m["num"]) != _normal(want):
            problems.append(Problem(name, line_of(m.start()),
                                    f"{m['num']} should be {want} ({m['stem']}:{m['key']})"))
    for line, token in unbound_numbers(text, allowed or allowed_numbers()):
        problems.append(Problem(name, line, f"unbound number {token}: bind it to its JSON "
                                            "(<!--stem:key fmt-->) or generate it"))
    return problems


def check_all(folder: Path = FIGURES, documents: Iterable[Path] = DOCUMENTS) -> list[Problem]:
    """Problems of every document (README.md, paper_notes/*.md) against ``folder``."""
    sources = Sources(folder)
    problems = []
    for path in documents:
        rel = str(Path(path).relative_to(REPO_ROOT))
        problems += check_text(Path(path).read_text(), rel, sources, allowed_numbers(folder))
    return problems


def render_all(folder: Path = FIGURES, documents: Iterable[Path] = DOCUMENTS) -> list[Path]:
    """Rewrite every document's bound numbers and blocks from ``folder``; returns the
    documents that changed."""
    sources = Sources(folder)
    changed = []
    for path in documents:
        old = Path(path).read_text()
        new = render_text(old, sources)
        if new != old:
            atomic_write_bytes(Path(path), new.encode())
            changed.append(Path(path))
    return changed


def main(argv: list[str] | None = None) -> int:
    """``python -m figures.claims [--check]``: rewrite (or only check) every document."""
    parser = argparse.ArgumentParser(prog="python -m figures.claims",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="only report disagreements (exit 1 if any); default: rewrite")
    args = parser.parse_args(argv)
    if not args.check:
        for path in render_all():
            print(f"rewrote {path.relative_to(REPO_ROOT)}")
    problems = check_all()
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s) in {len(DOCUMENTS)} documents")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
