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
