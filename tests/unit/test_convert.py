"""Arrow → torch conversion, per type, checked against the source values."""

from __future__ import annotations

import datetime
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from lance_lightning.convert import (
    BatchKeyCollisionError,
    UnsupportedColumnError,
    batch_keys,
    batch_to_tensors,
    check_key_collisions,
    describe_column,
)


def convert(array: pa.Array, name: str = "c", **kwargs):
    return batch_to_tensors(pa.record_batch({name: array}), **kwargs)


# (Arrow type, numpy dtype of the source values, torch dtype of the result). The numpy dtype
# is spelled out, not taken from ``DataType.to_pandas_dtype()``: that imports pandas on
# pyarrow < 26, and pandas is not a dependency.
NUMBER_TYPES = [
    (pa.int8(), np.int8, torch.int8),
    (pa.int16(), np.int16, torch.int16),
    (pa.int32(), np.int32, torch.int32),
    (pa.int64(), np.int64, torch.int64),
    (pa.uint8(), np.uint8, torch.uint8),
    (pa.uint16(), np.uint16, torch.int32),
    (pa.uint32(), np.uint32, torch.int64),
    (pa.uint64(), np.uint64, torch.int64),
    (pa.float16(), np.float16, torch.float16),
    (pa.float32(), np.float32, torch.float32),
    (pa.float64(), np.float64, torch.float64),
]


@pytest.mark.parametrize(("arrow_type", "np_dtype", "torch_dtype"), NUMBER_TYPES)
def test_numbers_keep_values_and_dtype(arrow_type, np_dtype, torch_dtype):
    values = np.array([0, 1, 7, 100], dtype=np_dtype)
    out = convert(pa.array(values, type=arrow_type))["c"]
    assert out.dtype == torch_dtype
    assert out.tolist() == values.tolist()
    assert describe_column(pa.field("c", arrow_type)) == f"Tensor[{str(torch_dtype)[6:]}, (rows,)]"


def test_every_type_converts_without_pandas(monkeypatch):
    """pandas is not a dependency: neither describing nor converting may import it."""
    monkeypatch.setitem(sys.modules, "pandas", None)  # any `import pandas` now raises ImportError
    columns = {
        f"n{i}": pa.array(np.arange(3, dtype=np_dtype), arrow_type)
        for i, (arrow_type, np_dtype, _) in enumerate(NUMBER_TYPES)
    }
    columns |= {
        "flag": pa.array([True, False, None]),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(6, np.float16)), 2),
        "seq": pa.array([[1], [], [2, 3]], pa.list_(pa.uint16())),
        "ts": pa.array([0, 1, 2], pa.timestamp("ms")),
        "d32": pa.array([0, 1, 2], pa.date32()),
        "d64": pa.array([0, 86_400_000, 2 * 86_400_000], pa.date64()),
        "t32": pa.array([0, 1, 2], pa.time32("s")),
        "dur": pa.array([0, 5, 10], pa.duration("ns")),
        "s": pa.array(["a", "b", "c"]).dictionary_encode(),
        "st": pa.array([{"k": 1}, {"k": 2}, {"k": 3}]),
    }
    batch = pa.record_batch(columns)
    for field in batch.schema:
        describe_column(field)
    out = batch_to_tensors(batch, nulls="mask")
    assert out["n8"].dtype == torch.float16 and out["n8"].tolist() == [0.0, 1.0, 2.0]
    assert out["flag_valid"].tolist() == [True, True, False]
    assert out["emb"].shape == (3, 2) and out["emb"].dtype == torch.float16
    assert [t.tolist() for t in out["seq"]] == [[1], [], [2, 3]] and out["seq"][0].dtype == torch.int32
    assert out["d64"].tolist() == [0, 86_400_000, 2 * 86_400_000]
    assert out["t32"].tolist() == [0, 1, 2] and out["dur"].tolist() == [0, 5, 10]
    assert all(out[k].dtype == torch.int64 for k in ("ts", "d32", "d64", "t32", "dur"))


def test_primitive_conversion_is_zero_copy():
    array = pa.array(np.arange(1000, dtype=np.float32))
    out = convert(array)["c"]
    assert out.data_ptr() == array.buffers()[1].address


def test_sliced_arrays_respect_offsets():
    emb = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(20, dtype=np.float32)), 4)
    batch = pa.record_batch({"i": pa.array(np.arange(5)), "emb": emb}).slice(2, 2)
    out = batch_to_tensors(batch)
    assert out["i"].tolist() == [2, 3]
    assert out["emb"].tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]


def test_bool_becomes_bool_tensor():
    out = convert(pa.array([True, False, True]))["c"]
    assert out.dtype == torch.bool and out.tolist() == [True, False, True]


def test_bfloat16_extension_from_field_metadata():
    values = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    raw = values.view(torch.int16).numpy().tobytes()
    field = pa.field("bf", pa.binary(2), metadata={"ARROW:extension:name": "lance.bfloat16"})
    array = pa.Array.from_buffers(pa.binary(2), 3, [None, pa.py_buffer(raw)])
    batch = pa.RecordBatch.from_arrays([array], schema=pa.schema([field]))
    out = batch_to_tensors(batch)["bf"]
    assert out.dtype == torch.bfloat16 and torch.equal(out, values)
    assert describe_column(field) == "Tensor[bfloat16, (rows,)]"


def test_nested_fixed_size_list_becomes_nd_tensor():
    values = np.arange(3 * 2 * 5, dtype=np.int16)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(values), 5)
    outer = pa.FixedSizeListArray.from_arrays(inner, 2)
    out = convert(outer)["c"]
    assert out.shape == (3, 2, 5) and out.dtype == torch.int16
    assert torch.equal(out, torch.from_numpy(values.reshape(3, 2, 5)))
    assert describe_column(pa.field("c", outer.type)) == "Tensor[int16, (rows, 2, 5)]"


def test_fixed_shape_tensor_extension():
    values = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    array = pa.FixedShapeTensorArray.from_numpy_ndarray(values)
    out = convert(array)["c"]
    assert out.shape == (4, 2, 3) and torch.equal(out, torch.from_numpy(values))


def test_strings_and_binary_become_python_lists():
    out = batch_to_tensors(
        pa.record_batch(
            {
                "s": pa.array(["a", "", "ü"]),
                "ls": pa.array(["x", "y", "z"], pa.large_string()),
                "b": pa.array([b"\x00", b"", b"ab"]),
                "lb": pa.array([b"1", b"2", b"3"], pa.large_binary()),
            }
        )
    )
    assert out == {"s": ["a", "", "ü"], "ls": ["x", "y", "z"], "b": [b"\x00", b"", b"ab"], "lb": [b"1", b"2", b"3"]}


def test_variable_length_lists_become_lists_of_views():
    array = pa.array([[1.0, 2.0], [], [3.0]], pa.list_(pa.float32()))
    out = convert(array)["c"]
    assert [t.tolist() for t in out] == [[1.0, 2.0], [], [3.0]]
    assert all(t.dtype == torch.float32 for t in out)
    assert describe_column(pa.field("c", array.type)) == "list[Tensor[float32, (length,)]]"


def test_temporal_types_become_int64_counts():
    ts = pa.array([datetime.datetime(2020, 1, 1), datetime.datetime(2020, 1, 2)], pa.timestamp("us"))
    dates = pa.array([datetime.date(1970, 1, 2), datetime.date(1970, 1, 11)])
    out = batch_to_tensors(pa.record_batch({"ts": ts, "d": dates}))
    assert out["ts"].dtype == torch.int64
    assert out["ts"].tolist() == [1577836800000000, 1577923200000000]
    assert out["d"].tolist() == [1, 10]


def test_dictionary_and_struct():
    out = batch_to_tensors(
        pa.record_batch(
            {
                "cat": pa.array(["a", "b", "a"]).dictionary_encode(),
                "st": pa.array([{"k": 1, "v": "x"}, {"k": 2, "v": "y"}, {"k": 3, "v": "z"}]),
            }
        )
    )
    assert out["cat"] == ["a", "b", "a"]
    assert out["st"]["k"].tolist() == [1, 2, 3] and out["st"]["v"] == ["x", "y", "z"]


def test_nulls_raise_naming_the_column():
    with pytest.raises(UnsupportedColumnError, match=r"'score'.*1 null"):
        convert(pa.array([1.0, None, 3.0]), name="score")


def test_nulls_in_embeddings_raise():
    emb = pa.array([[1.0, 2.0], None], pa.list_(pa.float32(), 2))
    with pytest.raises(UnsupportedColumnError, match="'emb'"):
        convert(emb, name="emb")


def test_nulls_mask_gives_zeros_and_validity():
    out = convert(pa.array([1.0, None, 3.0]), name="score", nulls="mask")
    assert out["score"].tolist() == [1.0, 0.0, 3.0]
    assert out["score_valid"].tolist() == [True, False, True]


@pytest.mark.parametrize(
    "array",
    [
        pa.array([1, 2], pa.decimal128(5, 2)),
        pa.array([[("a", 1)]], pa.map_(pa.string(), pa.int64())),
        pa.array([["a"], ["b"]], pa.list_(pa.string())),
    ],
)
def test_unsupported_types_name_column_and_type(array):
    with pytest.raises(UnsupportedColumnError, match=r"column 'odd' has Arrow type .*transform"):
        describe_column(pa.field("odd", array.type))
    with pytest.raises(UnsupportedColumnError, match="column 'odd'"):
        convert(array, name="odd")


def test_empty_batch_converts():
    out = batch_to_tensors(pa.table({"i": pa.array([], pa.int64())}))
    assert out["i"].shape == (0,)


def test_fixed_size_lists_with_null_rows_keep_their_rows_under_mask():
    """A null list row is zeros with valid=False; the rows after it keep their own values (flatten()
    drops null slots, which shifted them before). Sliced and nested lists too."""
    flat = pa.FixedSizeListArray.from_arrays(
        pa.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], pa.float32()), 2, mask=pa.array([False, True, False])
    )
    out = batch_to_tensors(pa.table({"v": flat}), nulls="mask")
    assert out["v"].tolist() == [[1.0, 2.0], [0.0, 0.0], [5.0, 6.0]]
    assert out["v_valid"].tolist() == [True, False, True]
    sliced = batch_to_tensors(pa.table({"v": flat}).slice(1), nulls="mask")
    assert sliced["v"].tolist() == [[0.0, 0.0], [5.0, 6.0]]
    inner = pa.FixedSizeListArray.from_arrays(pa.array(range(12), pa.int32()), 2)
    nested = pa.FixedSizeListArray.from_arrays(inner, 2, mask=pa.array([True, False, False]))
    got = batch_to_tensors(pa.table({"n": nested}), nulls="mask")
    assert got["n"].tolist() == [[[0, 0], [0, 0]], [[4, 5], [6, 7]], [[8, 9], [10, 11]]]
    with pytest.raises(UnsupportedColumnError, match="column 'v' has 1 null"):
        batch_to_tensors(pa.table({"v": flat}), nulls="raise")


def test_under_mask_a_nullable_column_has_its_mask_in_every_batch():
    """The keys of a batch follow the schema, not the rows: a nullable column with no null in these
    rows still comes with an all-True mask, a non-nullable one with none, a struct's nullable child
    with its own (in the order convert writes them)."""
    schema = pa.schema(
        [
            pa.field("score", pa.float32()),  # nullable (Arrow's default), no null in these rows
            pa.field("id", pa.int64(), nullable=False),
            pa.field("pair", pa.struct([pa.field("a", pa.int32()), pa.field("b", pa.int32(), nullable=False)])),
        ]
    )
    rows = pa.table({"score": [1.0, 2.0], "id": [7, 8], "pair": [{"a": 1, "b": 2}, {"a": 3, "b": 4}]}, schema=schema)
    out = batch_to_tensors(rows, nulls="mask")
    assert list(out) == ["score_valid", "score", "id", "pair_valid", "pair.a_valid", "pair"]
    assert out["score_valid"].tolist() == [True, True]
    assert out["pair.a_valid"].tolist() == [True, True]
    with_null = batch_to_tensors(rows.set_column(0, "score", pa.array([None, 2.0], pa.float32())), nulls="mask")
    assert list(with_null) == list(out)
    assert with_null["score_valid"].tolist() == [False, True]
    assert list(batch_to_tensors(rows)) == ["score", "id", "pair"]  # nulls="raise": no masks


def test_batch_keys_name_every_mask_and_refuse_a_shared_key():
    pair = pa.struct([pa.field("a", pa.float32()), pa.field("b", pa.int64(), nullable=False)])
    fields = [pa.field("x", pa.int64()), pa.field("pair", pair), pa.field("y", pa.int64(), nullable=False)]
    assert list(batch_keys(fields, nulls="raise")) == ["x", "pair", "y"]
    assert list(batch_keys(fields, nulls="mask")) == ["x", "pair", "y", "x_valid", "pair_valid", "pair.a_valid"]
    assert list(
        batch_keys([pa.field("y", pa.int64(), nullable=False), pa.field("y_valid", pa.bool_())], nulls="mask")
    ) == [
        "y",
        "y_valid",
        "y_valid_valid",
    ]  # a column that cannot hold nulls has no mask: nothing collides
    for clash in (pa.field("x_valid", pa.bool_()), pa.field("pair_valid", pa.int8())):
        with pytest.raises(
            BatchKeyCollisionError, match=rf"table 't': the nulls='mask' mask of column .* and column {clash.name!r}"
        ):
            check_key_collisions("t", [*fields, clash], nulls="mask")
        check_key_collisions("t", [*fields, clash], nulls="raise")


@pytest.mark.parametrize("mask_first", [True, False])
def test_a_column_and_a_mask_of_one_name_never_replace_each_other(mask_first):
    score = pa.array([1.0, None, 3.0])
    columns = {"score": score, "score_valid": pa.array([7, 8, 9])}
    batch = pa.RecordBatch.from_pydict(columns if mask_first else dict(reversed(list(columns.items()))))
    with pytest.raises(BatchKeyCollisionError, match="'score_valid'"):
        batch_to_tensors(batch, nulls="mask")
