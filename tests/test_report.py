import numpy as np
import pytest
import torch

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
