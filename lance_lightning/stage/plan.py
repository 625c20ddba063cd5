"""What a stage holds and how: the layout of its directory, which columns are stored flat, its size.

Layout of a stage directory (``layout="flat"``, the default; ``"arrow"`` puts every column in the
Arrow file):

``col-<i>.npy``        column ``i`` when its values have a fixed width (numbers, bools, fixed-size
                       lists and fixed-shape tensors of them): ``(rows, *shape)``, the shape
                       :func:`~lance_lightning.convert.batch_to_tensors` gives; nulls stored as 0
``col-<i>.valid.npy``  its validity (bool), written only when the column has nulls
``rows.arrow``         the other columns: an uncompressed Arrow IPC file, memory-mapped to read
``schema.arrow``       the split's Arrow schema (every column, with its metadata)
``manifest.json``      what was copied (no secrets) and every file's size and CRC-32
``.lease``             the lock file of readers (see :class:`~.store.Lease`); not in the manifest

Row ``i`` of every file is the split's ``i``-th smallest row address.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

ARROW_FILE = "rows.arrow"
SCHEMA_FILE = "schema.arrow"
LAYOUTS = ("flat", "arrow")
_LEAF_TYPES = {
    pa.bool_(),
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.uint64(),
    pa.float16(),
    pa.float32(),
    pa.float64(),
}


def flat_spec(field: pa.Field) -> dict[str, Any] | None:
    """How a fixed-width column is stored as one flat array (None: it goes to the Arrow file)."""
    t = field.type
    shape: list[int] | None = None
    if isinstance(t, pa.FixedShapeTensorType):
        shape, t = list(t.shape), t.storage_type
    elif isinstance(t, pa.ExtensionType) or field.metadata and b"ARROW:extension:name" in field.metadata:
        return None  # bfloat16 and other extensions: their own conversion
    levels = []
    while pa.types.is_fixed_size_list(t):
        levels.append(t.list_size)
        t = t.value_type
    if t not in _LEAF_TYPES:
        return None
    dtype = pa.array([], t).to_numpy(zero_copy_only=False).dtype
    return {"dtype": dtype.str, "shape": shape if shape is not None else levels, "levels": levels}


def column_plan(schema: pa.Schema, layout: str, demoted: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """``{column: {"file": ..., **flat_spec}}`` for the columns stored flat; the rest go to the Arrow file."""
    if layout not in LAYOUTS:
        raise ValueError(f"stage layout must be one of {LAYOUTS}, got {layout!r}")
    plan = {}
    for i, field in enumerate(schema):
        spec = flat_spec(field) if layout == "flat" and field.name not in demoted else None
        if spec is not None:
            plan[field.name] = {"file": f"col-{i}.npy", **spec}
    return plan


def estimate_stage_bytes(table: Any, columns: Sequence[str], num_rows: int, *, sample_rows: int = 1024) -> int:
    """Bytes a stage of ``num_rows`` rows of ``columns`` will take: fixed widths from the schema,
    the others from the first ``sample_rows`` rows of the table (plus 5% and 64 KiB of slack)."""
    schema = pa.schema([table.schema.field(c) for c in columns])
    per_row = 0.0
    variable = []
    for field in schema:
        spec = flat_spec(field)
        if spec is None:
            variable.append(field.name)
        else:
            per_row += np.dtype(spec["dtype"]).itemsize * int(np.prod(spec["shape"], dtype=np.int64))
    if variable and num_rows:
        sample = table.search().select(variable).limit(sample_rows).to_arrow()
        if sample.num_rows:
            per_row += sample.nbytes / sample.num_rows
    return int(per_row * num_rows * 1.05) + (64 << 10)
