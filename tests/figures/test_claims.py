"""The checker that binds the numbers of README.md and paper_notes/ to the results JSON.

The checker is tested on planted documents (a stale number, an unbound number, an edited
generated block must each be reported; a correct document must not be), and then run on
the real documents: a number there that disagrees with its committed JSON fails CI.
"""

from __future__ import annotations

import json

import pytest

from experiments.common.stats import format_number
from figures import claims


@pytest.fixture()
def toy(tmp_path):
    """A results folder with one JSON 'toy' (no experiment module: paths only)."""
    (tmp_path / "toy.json").write_text(json.dumps({
        "config": {"n": 1000, "lr": 0.002, "ts": [0.05, 0.5]},
        "results": {"gap": [0.004321, -0.1449], "big": 6.5e6, "count": 17},
    }))
    return claims.Sources(tmp_path), claims.allowed_numbers(tmp_path)


@pytest.mark.parametrize("value, fmt, text", [
    (0.004321, ".2%", "0.43%"), (-0.1449, ".2f", "\u22120.14"), (6.5e6, ".2e", "6.50e6"),
    (0.001, ".0e", "1e\u22123"), (31930.4, ",.0f", "31,930"), (17, None, "17"),
])
def test_format_number_writes_numbers_as_the_notes_do(value, fmt, text):
    assert format_number(value, fmt) == text


def test_a_correct_document_passes_and_renders_to_itself(toy):
    sources, allowed = toy
    doc = ("The gap is 0.43%<!--toy:results.gap.0 .2%--> at n = 1,000 and lr 2e-3,\n"
           "then \u22120.14<!--toy:results.gap.1 .2f--> (Thm 4.3, Fig. 1, `x = 12.5`).\n")
    assert claims.check_text(doc, "doc", sources, allowed) == []
    assert claims.render_text(doc, sources) == doc


def test_a_stale_bound_number_is_reported_and_rewritten(toy):
    sources, allowed = toy
    doc = "The gap is 0.44%<!--toy:results.gap.0 .2%-->.\n"
    problems = claims.check_text(doc, "doc", sources, allowed)
    assert len(problems) == 1 and "should be 0.43%" in problems[0].message
    fixed = claims.render_text(doc, sources)
    assert "0.43%<!--toy:results.gap.0 .2%-->" in fixed
    assert claims.check_text(fixed, "doc", sources, allowed) == []


@pytest.mark.parametrize("planted", ["0.37", "207", "\u221272", "31,930", "37%", "2.8e4",
                                     "567K"])
def test_a_hand_typed_number_is_reported(toy, planted):
    sources, allowed = toy
    doc = f"Fine-tuning raises it to {planted} (measured).\n"
    problems = claims.check_text(doc, "doc", sources, allowed)
    assert [p.line for p in problems] == [1]
    assert "unbound number" in problems[0].message


def test_settings_names_code_and_pilots_are_not_measurements(toy):
    sources, allowed = toy
    doc = ("At t = 0.05 and t = 0.5, n = 1000, 3 seeds, Prop. 4.1, Lemma C.1, §6.2, DiT-S/2,\n"
           "the 1/9 rule, 2-D, in 2023; `sigma = 0.123`; a pilot gave 0.85<!--pilot-->.\n")
    assert claims.check_text(doc, "doc", sources, allowed) == []


def test_an_edited_generated_block_and_an_unknown_key_are_reported(tmp_path, monkeypatch):
    (tmp_path / "toy.json").write_text(json.dumps({"config": {}, "results": {}}))

    class Module:
        NAME = "toy"

        @staticmethod
        def blocks(result):
            return {"table": "| a |\n| --- |\n| 1.25 |"}

    monkeypatch.setattr(claims, "_modules", lambda: {"toy": Module})
    sources = claims.Sources(tmp_path)
    good = "<!-- generated: toy:table -->\n| a |\n| --- |\n| 1.25 |\n<!-- /generated -->\n"
    assert claims.check_text(good, "doc", sources, frozenset()) == []
    bad = good.replace("1.25", "1.26")
    assert "differs from its JSON" in claims.check_text(bad, "doc", sources, frozenset())[0].message
    assert claims.render_text(bad, sources) == good
    unknown = "It is 3.5<!--toy:results.nothing .1f-->.\n"
    assert "no fact" in claims.check_text(unknown, "doc", sources, frozenset())[0].message


def test_the_documents_agree_with_the_committed_results():
    """README.md and every paper note against figures/*.json: the gate in `make test`."""
    problems = claims.check_all()
    assert not problems, "\n".join(map(str, problems[:40])) + f"\n({len(problems)} in all)"


def test_the_snapshot_of_the_papers_numbers_matches_paper_md():
    """PAPER_NUMBERS is what PAPER.md says (checked where ../shared is beside the checkout)."""
    if not claims.PAPER.exists():
        pytest.skip(f"{claims.PAPER} is not beside this checkout")
    assert claims.paper_numbers(claims.PAPER.read_text()) == claims.PAPER_NUMBERS


def test_a_divisor_in_the_format_rescales(toy):
    sources, allowed = toy
    doc = ("It holds 6.5<!--toy:results.big /1e6 .1f--> million, "
           "6.5M<!--toy:results.big /1e6 .1fM-->.\n")
    assert claims.check_text(doc, "doc", sources, allowed) == []
    assert "should be 6.5" in claims.check_text(doc.replace("6.5<", "6.4<"), "doc", sources,
                                                 allowed)[0].message
    stale = claims.check_text(doc.replace("6.5M<", "6.4M<"), "doc", sources, allowed)
    assert "should be 6.5M" in stale[0].message
