"""Arrow → torch, one pure function per Arrow type family.

:func:`batch_to_tensors` turns a ``pyarrow.RecordBatch`` into ``dict[column, value]``:

=====================================  ===================================================
Arrow type                             value
=====================================  ===================================================
int8..int64, uint8..uint64, float16,   1-D tensor of the same dtype, zero-copy when the
float32, float64                       array has no offset trouble (uint16/32/64 widen to
                                       the next signed type: torch has no such dtypes)
bool                                   1-D ``torch.bool`` tensor (Arrow packs bits: copied)
bfloat16 (``lance.bfloat16``)          1-D ``torch.bfloat16`` tensor
fixed_size_list (nested too),          N-D tensor ``(rows, *shape)``, zero-copy from the
``arrow.fixed_shape_tensor``           child buffer
list / large_list of numbers           ``list[Tensor]``: one 1-D view per row into one
                                       shared values buffer (``pad_sequence`` pads it)
string / large_string / string_view    ``list[str]``
binary / large_binary / fixed binary   ``list[bytes]``
timestamp / date / time / duration     int64 tensor of the type's own unit
dictionary                             decoded, then converted as its value type
struct                                 ``dict`` of its converted children
=====================================  ===================================================

Nulls raise :class:`UnsupportedColumnError` naming the column, unless the caller asks for
``nulls="mask"``: then nulls in numeric columns become 0, and every column the schema lets hold
nulls (a nullable field) comes with a bool tensor ``"<column>_valid"`` in every batch, all True
where the batch has none: the keys of a batch depend on the schema alone, never on which rows
were read together (a worker's group of batches, a single batch).

Other types (decimal, map, union, lists of strings...) raise :class:`UnsupportedColumnError`
naming the column and type: cast them in SQL, or leave them out of ``columns`` and convert
them in a transform.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import torch

NullPolicy = Literal["raise", "mask"]
BFLOAT16_EXTENSION = "lance.bfloat16"
_EXT_KEY = b"ARROW:extension:name"


class UnsupportedColumnError(TypeError):
    """A column whose Arrow type or content has no tensor form here."""


class BatchKeyCollisionError(ValueError):
    """Two things of a batch would share one key: a column and a ``nulls="mask"`` mask (or two masks)."""


def batch_keys(fields: list[pa.Field], *, nulls: NullPolicy) -> dict[str, str]:
    """The top-level keys of a batch of ``fields`` under ``nulls``, each with what it holds (``"column
    'x'"``, ``"the mask of column 'x'"``); a :class:`BatchKeyCollisionError` where two would share one key.

    With ``nulls="mask"`` every nullable field brings ``<name>_valid``, and every nullable child of a
    struct ``<struct>.<child>_valid`` (as :func:`column_to_tensor` writes them). Checked at setup,
    before any batch is read: otherwise one of the two is silently replaced by the other.
    """
    keys: dict[str, str] = {}

    def add(key: str, what: str) -> None:
        if key in keys:
            raise BatchKeyCollisionError(key, keys[key], what)
        keys[key] = what

    def masks(name: str, t: pa.DataType, nullable: bool) -> None:
        if nullable:
            add(f"{name}_valid", f"the nulls='mask' mask of column {name!r}")
        while isinstance(t, pa.ExtensionType) or pa.types.is_dictionary(t):
            t = t.storage_type if isinstance(t, pa.ExtensionType) else t.value_type
        if pa.types.is_struct(t):
            for child in t:
                masks(f"{name}.{child.name}", child.type, child.nullable)

    for f in fields:
        add(f.name, f"column {f.name!r}")
    if nulls == "mask":
        for f in fields:
            masks(f.name, f.type, f.nullable)
    return keys


def check_key_collisions(table_name: str, fields: list[pa.Field], *, nulls: NullPolicy) -> None:
    """Refuse, naming the table and both columns, a selection whose batch would hold one key twice."""
    try:
        batch_keys(fields, nulls=nulls)
    except BatchKeyCollisionError as err:
        key, first, second = err.args
        raise BatchKeyCollisionError(
            f"table {table_name!r}: {second} and {first} would both be the batch's key {key!r} "
            "(one silently replacing the other). Leave one of the two columns out of `columns`, rename the column "
            f"in the table, or use nulls='raise' (filter the nulls out, e.g. filter=\"<column> IS NOT NULL\")."
        ) from None


def _is_bfloat16(field: pa.Field) -> bool:
    t = field.type
    if isinstance(t, pa.ExtensionType):
        return t.extension_name == BFLOAT16_EXTENSION
    meta = field.metadata or {}
    return meta.get(_EXT_KEY, b"").decode() == BFLOAT16_EXTENSION and pa.types.is_fixed_size_binary(t)


def _unsupported(name: str, t: pa.DataType, why: str = "") -> UnsupportedColumnError:
    return UnsupportedColumnError(
        f"column {name!r} has Arrow type {t}, which has no tensor conversion{why}. "
        "Cast it in SQL, or leave it out of `columns` and decode it in a `transform`."
    )


def describe_column(field: pa.Field) -> str:
    """What :func:`batch_to_tensors` makes of ``field``, e.g. ``"Tensor[float32, (rows, 128)]"``.

    Raises :class:`UnsupportedColumnError` for types it cannot convert, so a bad column is
    found at setup, before any batch is read.
    """
    return _describe(field.name, field.type, is_bf16=_is_bfloat16(field))


def _describe(name: str, t: pa.DataType, *, is_bf16: bool = False) -> str:
    if is_bf16:
        return "Tensor[bfloat16, (rows,)]"
    if isinstance(t, pa.FixedShapeTensorType):
        return f"Tensor[{_dtype_name(name, t.value_type)}, (rows, {', '.join(map(str, t.shape))})]"
    if isinstance(t, pa.ExtensionType):
        return _describe(name, t.storage_type)
    if pa.types.is_dictionary(t):
        return _describe(name, t.value_type)
    if pa.types.is_fixed_size_list(t):
        shape, leaf = _fixed_shape(t)
        return f"Tensor[{_dtype_name(name, leaf)}, (rows, {', '.join(map(str, shape))})]"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        if _is_numeric(t.value_type):
            return f"list[Tensor[{_dtype_name(name, t.value_type)}, (length,)]]"
        raise _unsupported(name, t, " (only lists of numbers or booleans are converted)")
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "list[str]"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "list[bytes]"
    if pa.types.is_binary_view(t):
        return "list[bytes]"
    if pa.types.is_temporal(t):
        return "Tensor[int64, (rows,)]"
    if pa.types.is_struct(t):
        inner = ", ".join(f"{f.name}: {_describe(f'{name}.{f.name}', f.type)}" for f in t)
        return "{" + inner + "}"
    if _is_numeric(t):
        return f"Tensor[{_dtype_name(name, t)}, (rows,)]"
    raise _unsupported(name, t)


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


WIDENED = {pa.uint16(): torch.int32, pa.uint32(): torch.int64, pa.uint64(): torch.int64}
"""Arrow types torch has no dtype for, and what they become (uint64 wraps). The stage reader
(:mod:`.stage.reader`) widens by this table too."""


def torch_dtype_to_numpy(dtype: torch.dtype) -> np.dtype:
    """The NumPy dtype of a torch dtype (``torch.int64`` -> ``int64``)."""
    return torch.empty(0, dtype=dtype).numpy().dtype


@functools.cache
def numpy_dtype_to_torch(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a NumPy dtype torch has (``int64`` -> ``torch.int64``)."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


# Arrow primitive → torch dtype, spelled out: ``DataType.to_pandas_dtype()`` imports pandas
# on pyarrow < 26, and pandas is not a dependency.
_TORCH_DTYPES = {
    pa.bool_(): torch.bool,
    pa.int8(): torch.int8,
    pa.int16(): torch.int16,
    pa.int32(): torch.int32,
    pa.int64(): torch.int64,
    pa.uint8(): torch.uint8,
    **WIDENED,
    pa.float16(): torch.float16,
    pa.float32(): torch.float32,
    pa.float64(): torch.float64,
}


def _torch_dtype(name: str, t: pa.DataType) -> torch.dtype:
    dtype = _TORCH_DTYPES.get(t)
    if dtype is None:
        raise _unsupported(name, t)
    return dtype


def _fixed_shape(t: pa.DataType) -> tuple[list[int], pa.DataType]:
    shape = []
    while pa.types.is_fixed_size_list(t):
        shape.append(t.list_size)
        t = t.value_type
    return shape, t


def batch_to_tensors(batch: pa.RecordBatch | pa.Table, *, nulls: NullPolicy = "raise") -> dict[str, Any]:
    """Convert every column of ``batch``; see the module docstring for the per-type rules."""
    if isinstance(batch, pa.Table):
        batch = batch.combine_chunks().to_batches()[0] if batch.num_rows else _empty_batch(batch.schema)
    out: dict[str, Any] = {}
    for field, column in zip(batch.schema, batch.columns):
        value = column_to_tensor(field, column, nulls=nulls, out=out)
        if field.name in out:  # a mask written under this column's name: check_key_collisions refuses it at setup
            raise _collision(field.name)
        out[field.name] = value
    return out


def _collision(key: str) -> BatchKeyCollisionError:
    return BatchKeyCollisionError(
        f"with nulls='mask', column {key!r} and a mask named {key!r} would share one key of the batch; leave one of "
        "the columns out, rename one, or use nulls='raise'"
    )


def _empty_batch(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], type=f.type) for f in schema], schema=schema)


def column_to_tensor(
    field: pa.Field, array: pa.Array, *, nulls: NullPolicy = "raise", out: dict[str, Any] | None = None
) -> Any:
    """Convert one Arrow column; with ``nulls="mask"`` a nullable field's validity goes into ``out``."""
    name = field.name
    if _is_bfloat16(field):
        storage = array.storage if isinstance(array, pa.ExtensionArray) else array
        array = _check_nulls(name, storage, nulls, out, field.nullable)
        raw = np.frombuffer(storage.buffers()[1], dtype=np.int16, count=len(storage) + storage.offset)
        return torch.from_numpy(raw[storage.offset :].copy()).view(torch.bfloat16)
    return _convert(name, field.type, array, nulls, out, field.nullable)


def _check_nulls(
    name: str, array: pa.Array, nulls: NullPolicy, out: dict[str, Any] | None, nullable: bool = True
) -> pa.Array:
    """``array``, its nulls checked: with ``nulls="mask"`` (and an ``out``), a nullable column's
    ``<name>_valid`` goes into ``out`` whether or not these rows hold a null; else a null raises."""
    masked = nulls == "mask" and out is not None
    if masked and (nullable or array.null_count) and f"{name}_valid" in out:
        raise _collision(f"{name}_valid")  # a column (or mask) of that name came first
    if array.null_count == 0:
        if masked and nullable:
            out[f"{name}_valid"] = torch.ones(len(array), dtype=torch.bool)
        return array
    if masked:
        out[f"{name}_valid"] = torch.from_numpy(array.is_valid().to_numpy(zero_copy_only=False))
        return array
    raise UnsupportedColumnError(
        f"column {name!r} has {array.null_count} null value(s) in the rows read; tensors cannot hold nulls. "
        'Filter them out (e.g. filter="' + name + ' IS NOT NULL"), fill them in a transform, '
        "or pass nulls='mask' to get zeros plus a '" + name + "_valid' mask."
    )


def _convert(
    name: str, t: pa.DataType, array: pa.Array, nulls: NullPolicy, out: dict[str, Any] | None, nullable: bool = True
) -> Any:
    if isinstance(t, pa.FixedShapeTensorType):
        array = _check_nulls(name, array, nulls, out, nullable)
        storage = array.storage
        values = _convert(name, storage.type, storage, nulls, None)
        return values.reshape(len(array), *t.shape)
    if isinstance(t, pa.ExtensionType):
        return _convert(name, t.storage_type, array.storage, nulls, out, nullable)
    if pa.types.is_dictionary(t):
        return _convert(name, t.value_type, array.dictionary_decode(), nulls, out, nullable)
    if pa.types.is_fixed_size_list(t):
        array = _check_nulls(name, array, nulls, out, nullable)
        shape, _ = _fixed_shape(t)
        leaf = array
        for _ in shape:
            # every slot's values, a null list's included (flatten() drops those and the rows shift)
            size = leaf.type.list_size
            leaf = leaf.values.slice(leaf.offset * size, len(leaf) * size)
        values = _numeric(name, leaf, nulls, None).reshape(len(array), *shape)
        if array.null_count:  # nulls="mask": a null list is zeros (its slot holds whatever was written);
            values = values.clone()  # a copy: the values may share Arrow's read-only buffer
            values[torch.from_numpy(array.is_null().to_numpy(zero_copy_only=False))] = 0
        return values
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        array = _check_nulls(name, array, nulls, out, nullable)
        if not _is_numeric(t.value_type):
            raise _unsupported(name, t, " (only lists of numbers or booleans are converted)")
        values = _numeric(name, array.flatten(), nulls, None)
        offsets = array.offsets.to_numpy()
        lengths = np.diff(offsets).tolist()
        return list(torch.split(values, lengths)) if lengths else []
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        _check_nulls(name, array, nulls, out, nullable)
        return array.to_pylist()
    if (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_binary_view(t)
    ):
        _check_nulls(name, array, nulls, out, nullable)
        return array.to_pylist()
    if pa.types.is_temporal(t):
        array = _check_nulls(name, array, nulls, out, nullable)
        width = pa.int32() if t.bit_width == 32 else pa.int64()
        return _numeric(name, array.view(width).cast(pa.int64()), nulls, None)
    if pa.types.is_struct(t):
        _check_nulls(name, array, nulls, out, nullable)
        children: dict[str, Any] = {}
        for i, child in enumerate(t):
            child_name = f"{name}.{child.name}"
            children[child.name] = _convert(child_name, child.type, array.field(i), nulls, out, child.nullable)
        return children
    if _is_numeric(t):
        return _numeric(name, _check_nulls(name, array, nulls, out, nullable), nulls, None)
    raise _unsupported(name, t)


def _numeric(name: str, array: pa.Array, nulls: NullPolicy, out: dict[str, Any] | None) -> torch.Tensor:
    """A primitive Arrow array as a 1-D tensor; zero-copy unless bits or nulls force a copy."""
    t = array.type
    if array.null_count:
        if nulls != "mask":
            _check_nulls(name, array, "raise", None)
        array = array.fill_null(False if pa.types.is_boolean(t) else 0)
    if pa.types.is_boolean(t):
        return torch.from_numpy(array.to_numpy(zero_copy_only=False))
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise _unsupported(name, t)
    arr = array.to_numpy(zero_copy_only=False)
    if t in WIDENED:
        arr = arr.astype(torch_dtype_to_numpy(WIDENED[t]))
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    # Arrow buffers are read-only. The tensor shares the buffer (zero-copy); torch's one-time
    # "not writable" warning is silenced because the batch is owned by this tensor alone.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _dtype_name(name: str, t: pa.DataType) -> str:
    return str(_torch_dtype(name, t)).removeprefix("torch.")
