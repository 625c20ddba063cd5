"""``predict_step``'s outputs as the writer's Arrow columns: one column per output, never two
outputs silently folded into one name."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch

from lance_lightning.writer.stage import PredictionWriteError, prediction_arrays


def test_a_dict_gives_one_column_per_key_named_as_asked():
    ids = torch.arange(3)
    out = prediction_arrays({"a": ids.float(), 2: ids * 2}, None)
    assert list(out) == ["a", "2"]
    assert out["2"][0].to_pylist() == [0, 2, 4]
    assert list(prediction_arrays({"a": ids, "b": ids}, "p")) == ["p_a", "p_b"]
    assert out["a"][0].type == pa.float32()


@pytest.mark.parametrize("column", [None, "p"])
def test_keys_that_make_the_same_column_name_are_refused(column):
    ids = torch.arange(3)
    with pytest.raises(PredictionWriteError, match=r"keys \[1, '1'\]: two of them make the same column name"):
        prediction_arrays({1: ids, "1": ids * 2}, column)
