"""The ensemble benchmark runs and reports finite, positive times (no timing assertion)."""

from __future__ import annotations

import math

from experiments.bench_ensemble import main


def test_bench_ensemble_reports_a_ratio(capsys):
    out = main(["--widths", "4,8", "--steps", "6", "--batch", "16", "--depth", "2"])
    assert all(math.isfinite(v) and v > 0 for v in out.values())
    assert "ratio" in capsys.readouterr().out
