import json
import numpy as np
import pytest
import torch

from gradsim_utils import report
from gradsim_utils.report import as_builtin


@pytest.mark.parametrize("value, expected, kind", [
    (np.float32(0.5), 0.5, float), (np.float64(1e-7), 1e-7, float), (np.int64(3), 3, int),
    (torch.tensor(2.5), 2.5, float), (torch.tensor(4), 4, int), ("text", "text", str), (True, True, bool),
])
def test_as_builtin_gives_python_scalars_whose_repr_formats(value, expected, kind):
    out = as_builtin(value)
    assert type(out) is kind and out == expected
    if kind is float:
        assert float(repr(out)) == expected


def test_as_builtin_rejects_tensors_with_several_values():
    with pytest.raises(ValueError, match="one-element"):
        as_builtin(torch.ones(2))


def test_record_claim_merges_records_and_rejects_untyped_verdicts(tmp_path):
    from gradsim_utils.report import load_claims, record_claim

    kwargs = dict(chapter="03_x", source="000", claim="GW > P", source_value="0.9", results_dir=tmp_path)
    record_claim("a", ours=np.float32(0.5), verdict="reproduced", **kwargs)
    record_claim("b", ours=0.1, verdict="not reproduced", ci=(np.float64(0.0), 0.2), **kwargs)
    record_claim("a", ours=0.6, verdict="reproduced", **kwargs)   # rerun replaces, not duplicates
    claims = load_claims(tmp_path)
    assert [c["claim_id"] for c in claims] == ["a", "b"]
    assert claims[0]["ours"] == pytest.approx(0.6) and claims[1]["ci"] == [0.0, 0.2]
    assert claims[0]["source"] == "000" and claims[0]["source_value"] == "0.9"
    assert [p.name for p in tmp_path.iterdir()] == ["03_x.json"]                 # no temporary file left
    with pytest.raises(ValueError, match="verdict"):
        record_claim("c", ours=1.0, verdict="sort of", **kwargs)
    with pytest.raises(ValueError, match="claim_id"):
        record_claim("bad id", ours=1.0, verdict="reproduced", **kwargs)


def _write_results(folder, records):
    """Hand-made results files: ``records`` as written by record_claim, grouped by chapter."""
    by_chapter = {}
    for r in records:
        by_chapter.setdefault(r["chapter"], {})[f"{r['claim_id']}@{r['regime']}"] = r
    for chapter, content in by_chapter.items():
        (folder / f"{chapter}.json").write_text(json.dumps(content))


def _record(claim_id, regime, verdict, ours=0.5, chapter="03_x", ci=None, fmt=".3f", quantity="q"):
    return dict(claim_id=claim_id, regime=regime, chapter=chapter, source="000", claim=f"claim {claim_id}",
                source_value="0.9", ours=ours, fmt=fmt, verdict=verdict, ci=ci, quantity=quantity, evidence="e")


def _table_rows(table):
    """Body rows of a Markdown table as lists of cell texts."""
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table.splitlines()[2:]]


def test_record_claim_keeps_each_regime_and_replaces_only_its_own(tmp_path):
    from gradsim_utils.report import load_claims, record_claim

    kwargs = dict(chapter="03_x", source="000", claim="GW > P", source_value="0.9", results_dir=tmp_path)
    record_claim("a", ours=0.1, verdict="reproduced", **kwargs)                        # default regime
    record_claim("a", ours=0.2, verdict="not reproduced", regime="lite", **kwargs)
    record_claim("a", ours=0.3, verdict="reproduced", regime="tiny", **kwargs)         # rerun of tiny only
    claims = load_claims(tmp_path)
    assert [(c["regime"], c["ours"]) for c in claims] == [("tiny", 0.3), ("lite", 0.2)]
    with pytest.raises(ValueError, match="regime"):
        record_claim("a", ours=0.1, verdict="reproduced", regime="imagenet", **kwargs)
    with pytest.raises(ValueError, match="claim_id"):                                   # would collide with a__lite
        record_claim("a__lite", ours=0.1, verdict="reproduced", **kwargs)


def test_record_claim_quantity_falls_back_to_evidence(tmp_path):
    from gradsim_utils.report import record_claim

    kwargs = dict(chapter="03_x", source="000", claim="c", source_value="1", ours=1.0, verdict="reproduced",
                  evidence="how it was measured", results_dir=tmp_path)
    assert record_claim("a", **kwargs)["quantity"] == "how it was measured"
    assert record_claim("a", quantity="share of models", **kwargs)["quantity"] == "share of models"


def test_matrix_shows_both_regimes_and_a_dash_where_one_did_not_record(tmp_path):
    from gradsim_utils.report import DASH, REGIMES, claims_markdown_table, load_claims

    _write_results(tmp_path, [_record("a", "tiny", "reproduced", ours=0.11),
                              _record("a", "lite", "reproduced", ours=0.22, chapter="03_x"),
                              _record("b", "tiny", "not reproduced", chapter="05_y")])
    table = claims_markdown_table(load_claims(tmp_path))
    header = table.splitlines()[0]
    assert REGIMES["tiny"] in header and REGIMES["lite"] in header and REGIMES["paper"] not in header
    assert header.index(REGIMES["tiny"]) < header.index(REGIMES["lite"])
    (a_claim, _, a_tiny, a_lite), (b_claim, _, b_tiny, b_lite) = _table_rows(table)
    assert "03_x.ipynb::a:.3f" in a_tiny and "03_x.ipynb::a__lite:.3f" in a_lite       # each regime's own number
    assert "**reproduced**" in a_tiny and "**not reproduced**" in b_tiny
    assert b_lite == DASH and "{doc}`ch. 5 <05_y>`" in b_claim
    assert "nan" not in table


def test_depends_on_the_setting_marks_exactly_the_claims_whose_verdicts_differ(tmp_path):
    from gradsim_utils.report import DEPENDS, claims_markdown_table, load_claims

    _write_results(tmp_path, [_record("same", "tiny", "reproduced"), _record("same", "lite", "reproduced"),
                              _record("differ", "tiny", "not reproduced"), _record("differ", "lite", "reproduced"),
                              _record("one", "lite", "explained by an artifact"),
                              _record("untested", "tiny", "not testable offline", ours=float("nan")),
                              _record("untested", "lite", "reproduced")])
    rows = {row[0].split(" (seed")[0]: row for row in _table_rows(claims_markdown_table(load_claims(tmp_path)))}
    assert [name for name, row in rows.items() if DEPENDS in row[0]] == ["claim differ"]
    assert rows["claim untested"][2].startswith("\u2014") and "nan" not in rows["claim untested"][2]


def test_claim_cell_names_the_quantity_with_its_format_and_interval():
    from gradsim_utils.report import claim_cell

    cell = claim_cell(_record("gap", "lite", "not reproduced", ours=-50.46, ci=(-55.12, -46.04), fmt=".1f",
                              chapter="08_sfam", quantity="SFAM minus best baseline, accuracy points"))
    assert cell == ("**not reproduced** \u00b7 SFAM minus best baseline, accuracy points: "
                    "{glue:text}`08_sfam.ipynb::gap__lite:.1f` [-55.1, -46.0]")
    assert claim_cell(_record("s", "tiny", "reproduced", quantity="a*b | c", fmt=".2f")).endswith(
        "a\\*b \\| c: {glue:text}`03_x.ipynb::s:.2f`")                                      # no CI, text escaped
    assert "nan" not in claim_cell(_record("s", "tiny", "reproduced", ci=(float("nan"), float("nan"))))


def test_counts_per_regime_and_missing_regimes(tmp_path):
    from gradsim_utils.report import counts_text, missing_regimes_text, verdict_counts

    claims = [_record("a", "lite", "reproduced"), _record("a", "tiny", "reproduced"),
              _record("b", "tiny", "not reproduced", chapter="02_w"), _record("c", "tiny", "reproduced")]
    counts = verdict_counts(claims)
    assert list(counts.index) == ["tiny", "lite"]
    assert counts.loc["tiny"].tolist() == [2, 1, 0, 0] and counts.loc["lite"].tolist() == [1, 0, 0, 0]
    per_chapter = verdict_counts(claims, per_chapter=True)
    assert list(per_chapter.index) == ["02_w \u00b7 tiny", "03_x \u00b7 tiny", "03_x \u00b7 lite"]
    assert per_chapter.to_numpy().sum() == len(claims)
    assert counts_text(claims) == ("tiny ResNets trained here: 2 reproduced, 1 not reproduced (of 3); "
                                   "pretrained EfficientNet-Lite family: 1 reproduced (of 1)")
    assert missing_regimes_text(claims).endswith("'paper' (ImageNet ResNets on Stable Diffusion images), which has not run")
    assert "every regime" in missing_regimes_text(claims + [_record("a", "paper", "reproduced")])


def test_names_text_lists_names_as_a_sentence_does():
    assert report.names_text(["vgg11"]) == "vgg11"
    assert report.names_text(("vgg11", "resnet18")) == "vgg11 and resnet18"
    assert report.names_text(x for x in ["a", "b", "c"]) == "a, b and c"
    with pytest.raises(ValueError, match="names must not be empty"):
        report.names_text([])


def test_value_range_cites_a_quoted_spread():
    assert report.value_range([0.832475, 0.970702, 0.891979]) == "0.832-0.971"
    assert report.value_range([0.547336], ".4f") == "0.5473-0.5473"
    with pytest.raises(ValueError, match="values"):
        report.value_range([])


def test_a_chapter_compares_its_regimes_claim_by_claim():
    from gradsim_utils.report import DASH, agreement_text, regime_comparison

    claims = [_record("same", "tiny", "reproduced", ours=0.5), _record("same", "lite", "reproduced", ours=0.25),
              _record("differ", "tiny", "not reproduced", ours=0.0), _record("differ", "lite", "reproduced"),
              _record("alone", "tiny", "reproduced", ours=float("nan"))]
    table = regime_comparison(claims).set_index("claim")
    assert list(table.columns) == ["tiny: ours", "tiny: verdict", "lite: ours", "lite: verdict", "regimes agree"]
    assert table.loc["same", "lite: ours"] == "0.250" and table.loc["same", "regimes agree"] == "yes"
    assert table.loc["differ", "regimes agree"] == "no" and table.loc["alone", "regimes agree"] == DASH
    assert table.loc["alone", "tiny: ours"] == DASH and table.loc["alone", "lite: verdict"] == DASH
    assert agreement_text(claims) == ("the regimes agree on 1 of 2 claims; they differ on "
                                      "differ (tiny: not reproduced, lite: reproduced)")
    assert agreement_text(claims[:2]) == "the regimes agree on 1 of 1 claims"
    assert agreement_text(claims[4:]) == "no claim of this chapter was judged in more than one regime"


def test_results_from_before_the_regimes_are_named_not_misread(tmp_path):
    from gradsim_utils.report import load_claims

    (tmp_path / "05_y.json").write_text(json.dumps({"old_claim": {"claim_id": "old_claim", "verdict": "reproduced"}}))
    with pytest.raises(ValueError, match=r"05_y.json holds records written before .*\['old_claim'\].*make clean"):
        load_claims(tmp_path)


def test_claims_carry_the_run_parameters_and_go_to_the_results_folder(tmp_path, monkeypatch):
    from gradsim_utils.report import RESULTS_ENV, RUN_ENV, load_claims, record_claim, results_folder

    kwargs = dict(chapter="03_x", source="000", claim="c", source_value="1", ours=1.0, verdict="reproduced")
    monkeypatch.delenv(RESULTS_ENV, raising=False)
    monkeypatch.delenv(RUN_ENV, raising=False)
    monkeypatch.setenv("GRADSIM_CACHE", str(tmp_path / "cache"))
    assert results_folder() == tmp_path / "cache" / "results"
    assert record_claim("a", **kwargs)["parameters"] is None                      # not run by gradsim_utils.book
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "book" / "_results"))
    monkeypatch.setenv(RUN_ENV, json.dumps({"profile": "smoke", "seed": 3}))
    record_claim("a", **kwargs)
    assert [c["parameters"] for c in load_claims()] == [{"profile": "smoke", "seed": 3}]
    assert (tmp_path / "book" / "_results" / "03_x.json").is_file()


def test_the_summary_refuses_to_mix_runs_and_names_chapters_and_values():
    from gradsim_utils.report import one_run, parameters_text

    def claim(chapter, **parameters):
        return dict(_record("a", "tiny", "reproduced", chapter=chapter), parameters={"profile": "smoke", **parameters})

    same = [claim("02_w", seed=0), claim("03_x", seed=0, n_bootstrap=50), claim("06_z", seed=0, image_folder="/d")]
    assert one_run(same) == {"profile": "smoke", "seed": 0, "n_bootstrap": 50, "image_folder": "/d"}
    assert parameters_text(one_run(same[:1])) == "profile='smoke', seed=0"
    mixed = same + [claim("04_y", seed=3), claim("05_v", seed=3, n_bootstrap=10)]
    with pytest.raises(ValueError) as info:
        one_run(mixed)
    message = str(info.value)
    assert "seed: 0 in 02_w, 03_x, 06_z; 3 in 04_y, 05_v" in message
    assert "n_bootstrap: 50 in 03_x; 10 in 05_v" in message and "profile" not in message.split("\n", 1)[1]


def test_your_models_have_their_own_column_and_are_never_missing(tmp_path):
    from gradsim_utils.report import REGIMES, YOURS, missing_regimes_text, record_claim, regime_comparison

    record_claim("a", chapter="03_x", source="000", claim="c", source_value="1", ours=0.5, verdict="reproduced",
                 regime=YOURS, results_dir=tmp_path)
    claims = [_record("a", "tiny", "reproduced"), _record("a", "lite", "reproduced"), _record("a", "paper", "reproduced")]
    assert "every regime" in missing_regimes_text(claims)  # a book without a reader's run lacks nothing
    yours = json.loads((tmp_path / "03_x.json").read_text())["a@yours"]
    table = regime_comparison(claims + [yours])
    assert list(table.columns)[-3:] == ["yours: ours", "yours: verdict", "regimes agree"] and REGIMES[YOURS]
