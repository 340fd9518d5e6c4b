"""Run every registered experiment's profile and draw its figure.

    python -m figures                     # quick profile, into figures/ (what the README shows)
    python -m figures --profile cifar_cpu --force   # the CPU-scale CIFAR-10 study (~40 min)
    python -m figures --profile cpu --force         # Thm 5.1 at a 4x budget, n to 256 (~55 min)
    python -m figures --profile paper     # paper scale (GPU), into runs/paper/
    python -m figures --only loss_gap --force

The quick profile also redraws the committed results of the other committed profiles
(``cifar_cpu``, figures/cifar_cpu/; ``cpu``, figures/cpu/) from their JSON; its --force does
not recompute them.

A finished result is reused (only the figure is redrawn) unless --force is given. After a
committed profile (quick, cifar_cpu, cpu), the numbers quoted in README.md and paper_notes/ are
rewritten from the new results (figures/claims.py) and any disagreement left is listed.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from experiments.common.runs import COMMITTED, PROFILE_NAMES, execute
from figures import REGISTRY, claims


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m figures", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="quick", choices=PROFILE_NAMES)
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this experiment (its NAME, e.g. loss_gap); repeatable")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    parser.add_argument("--force", action="store_true", help="recompute finished results")
    args = parser.parse_args(argv)

    modules = [importlib.import_module(name) for name in REGISTRY]
    known = {m.NAME for m in modules}
    unknown = set(args.only) - known
    if unknown:
        parser.error(f"--only: unknown experiment(s) {sorted(unknown)}; known: {sorted(known)}")
    for module in modules:
        if args.only and module.NAME not in args.only:
            continue
        if args.profile not in module.PROFILES:  # e.g. "gpu": only the DiT study has one
            print(f"[{module.NAME}] has no {args.profile!r} profile: skipped")
            continue
        start = time.perf_counter()
        execute(module, args.profile, out_dir=args.out, force=args.force)
        print(f"[{module.NAME}] done in {time.perf_counter() - start:.1f} s")
        if args.profile == "quick" and args.out is None:
            for other in sorted(set(COMMITTED) & set(module.PROFILES) - {"quick"}):
                try:  # redraw from the committed JSON, never rerun (tens of minutes)
                    execute(module, other, reuse_only=True)
                except FileNotFoundError as err:
                    print(f"[{module.NAME}] {other} not redrawn: {err}")
    if args.profile in COMMITTED and args.out is None:  # the results the documents quote
        for path in claims.render_all():
            print(f"rewrote the numbers of {path.relative_to(claims.REPO_ROOT)}")
        for problem in claims.check_all():
            print(f"claims: {problem}")


if __name__ == "__main__":
    main()
