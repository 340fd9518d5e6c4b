"""What the four benchmarks share: their names, where their numbers go, the environment.

The default JSON files are the committed results in figures/ (their names predate the
package and are kept); a --quick run never replaces them; --json and --no-json override.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
import torch

from experiments.benchmarks import common
from experiments.common.runs import REPO_ROOT

NAMES = ("scores", "metrics", "ensemble", "dit")


@pytest.mark.parametrize("name", NAMES)
def test_module_name_prog_and_default_json(name: str) -> None:
    mod = importlib.import_module(f"experiments.benchmarks.{name}")
    assert mod.MODULE == mod.__name__ == f"experiments.benchmarks.{name}"
    parser = mod._parser()
    assert parser.prog == f"python -m {mod.MODULE}"
    assert mod.DEFAULT_JSON == REPO_ROOT / "figures" / f"bench_{name}.json"
    args = parser.parse_args([])
    assert common.output_path(args, mod.DEFAULT_JSON) == mod.DEFAULT_JSON
    assert common.output_path(parser.parse_args(["--quick"]), mod.DEFAULT_JSON) is None


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    common.add_output_args(p, Path("/nowhere/bench_x.json"))
    return p.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), Path("/nowhere/bench_x.json")),
        (("--quick",), None),
        (("--json", "out.json"), Path("out.json")),
        (("--quick", "--json", "out.json"), Path("out.json")),
        (("--no-json",), None),
        (("--no-json", "--json", "out.json"), None),
    ],
)
def test_output_path(argv: tuple[str, ...], expected: Path | None) -> None:
    assert common.output_path(_args(*argv), Path("/nowhere/bench_x.json")) == expected


def test_finish_main_writes_and_fails_on_disagreement(tmp_path: Path, capsys) -> None:
    path = tmp_path / "b.json"
    res = common.finish_main(
        {"a": 1}, _args("--json", str(path)), lambda cfg: {"config": cfg, "x": 2.0},
        lambda r: "report", tmp_path / "unused.json",
    )
    assert res == {"config": {"a": 1}, "x": 2.0}
    assert path.read_text().startswith("{") and "report" in capsys.readouterr().out
    assert not (tmp_path / "unused.json").exists()
    with pytest.raises(SystemExit):
        common.finish_main({}, _args("--no-json"), lambda cfg: {"agreement": {"agree": False}},
                           lambda r: "report", tmp_path / "unused.json")
    assert not (tmp_path / "unused.json").exists()


def test_environment_has_provenance_and_extra() -> None:
    env = common.environment(load_average_1min_before=0.5)
    assert env["torch"] == torch.__version__ and "commit" in env
    assert env["threads"] == torch.get_num_threads()
    assert env["load_average_1min_before"] == 0.5


def test_target_lines_say_met_only_when_the_value_is_within_its_bound():
    """A value above its bound reads NOT met, one below reads met, an unmeasured one '-'."""
    from experiments.benchmarks.common import target_entry, target_lines

    lines = target_lines({"fast": target_entry(0.5, 1.0), "slow": target_entry(1.5, 1.0),
                          "none": target_entry(None, 1.0)})
    assert lines[0].endswith(" met") and "0.500" in lines[0]
    assert lines[1].endswith("NOT met") and "(bound 1)" in lines[1]
    assert " - " in lines[2] and lines[2].endswith("NOT met")
