"""Fig. 1's script: the smoke profile runs in seconds, writes its JSON and its figure."""

from __future__ import annotations

import numpy as np
import pytest

from experiments import loss_gap
from experiments.common.runs import main


@pytest.fixture(scope="module")
def smoke(smoke_run):
    return smoke_run(loss_gap)


def test_smoke_writes_json_and_figure(smoke):
    out, result = smoke
    assert (out / "loss_gap.png").stat().st_size > 10_000
    assert (out / "loss_gap.pdf").exists()
    assert result["profile"] == "smoke" and result["config"] == loss_gap.PROFILES["smoke"]
    r = result["results"]
    cfg = result["config"]
    assert len(r["times"]) == cfg["num_times"]
    assert set(r["by_n"]) == {str(n) for n in cfg["ns"]}
    for entry in r["by_n"].values():
        for form in ("direct", "fisher"):
            m, lo, hi = (np.array(entry[form][k]) for k in ("mean", "ci_low", "ci_high"))
            assert np.all(lo <= m) and np.all(m <= hi) and np.all(m > 0)


def test_smoke_gap_tracks_closed_form_at_small_t(smoke):
    # Even the smoke setting (d=8, n<=80) is in the one-hot regime at t = 1e-3.
    r = smoke[1]["results"]
    for entry in r["by_n"].values():
        assert entry["fisher"]["mean"][0] == pytest.approx(r["closed_form"][0], rel=0.1)


def test_replot_uses_json_only(smoke, monkeypatch):
    out, _ = smoke
    monkeypatch.setattr(loss_gap, "compute", lambda *a: pytest.fail("recomputed"))
    main(loss_gap, ["--profile", "smoke", "--out", str(out)])


def test_bad_override_is_a_clear_cli_error(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(loss_gap, ["--profile", "smoke", "--out", str(tmp_path), "--set", "num_draw=5"])
    assert "unknown key 'num_draw'" in capsys.readouterr().err
