"""Per-row sample weights of the train split: read once at setup from the pinned table version, checked.

``weight_column`` names a numeric column: its value is the row's weight. ``balance_column`` names a
label column: the row's weight is ``1 / count`` of its value in the train split, so that every value
is drawn as often (class balance). With both, the weight is their product. The weights go to the
``weighted`` shuffle (:class:`~.orders.WeightedOrder`).

Read with one scan of the column and ``_rowid`` (:func:`~.reads.scan_with_row_ids`), mapped to the
split's rows: a function of the table version and the split only, the same on every rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .reads import offsets_of, scan_with_row_ids


class WeightError(ValueError):
    """A weight column that cannot weigh rows: not numeric, or a null, NaN, infinite or negative
    weight, or every weight 0. The message names the column, the count of bad rows and one of them."""


def _example(values: pa.Array | np.ndarray, row_ids: np.ndarray, bad: np.ndarray) -> str:
    first = int(np.flatnonzero(bad)[0])
    value = values[first].as_py() if isinstance(values, pa.Array) else values[first].item()
    return f"row address {int(row_ids[first])} (fragment {int(row_ids[first]) >> 32}) has {value!r}"


def check_weights(values: pa.Array, *, column: str, table: str, row_ids: np.ndarray) -> np.ndarray:
    """``values`` (one a train row, rows ``row_ids``) as ``float64`` weights, or a :class:`WeightError`.

    Refused: a non-numeric column; nulls, NaN, infinite or negative values (the count and an example
    row); every weight 0 (an epoch would draw nothing).
    """
    kind = values.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)):
        raise WeightError(
            f"weight_column {column!r} of table {table!r} is of type {kind}: a weight column must be numeric "
            "(integer or floating point), one weight >= 0 a row"
        )
    where = f"weight_column {column!r} of table {table!r}"
    nulls = np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if nulls.any():
        raise WeightError(
            f"{where} has {int(nulls.sum())} null weight(s) in the train split (of {len(values)} rows), e.g. "
            f"{_example(values, row_ids, nulls)}: every row needs a weight >= 0 (0: never drawn)"
        )
    weights = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    for bad, what in [(np.isnan(weights), "NaN"), (np.isinf(weights), "infinite"), (weights < 0, "negative")]:
        if bad.any():
            raise WeightError(
                f"{where} has {int(bad.sum())} {what} weight(s) in the train split (of {len(weights)} rows), e.g. "
                f"{_example(values, row_ids, bad)}: weights must be finite and >= 0 (0: never drawn)"
            )
    if len(weights) and not weights.any():
        raise WeightError(
            f"{where}: all {len(weights)} weights of the train split are 0, e.g. "
            f"{_example(values, row_ids, weights == 0)}: an epoch would draw no row. Give some rows a weight > 0"
        )
    return weights


def _is_label_type(kind: pa.DataType) -> bool:
    t = pa.types
    checks = (t.is_integer, t.is_floating, t.is_string, t.is_large_string, t.is_boolean, t.is_dictionary, t.is_temporal)
    return any(check(kind) for check in checks) or t.is_decimal(kind)


def class_balance(labels: pa.Array, *, column: str, table: str, row_ids: np.ndarray) -> np.ndarray:
    """``1 / count`` of each row's label among ``labels`` (``float64``): every label drawn as often.

    Refused: a column whose values are not labels (lists, vectors, structs, binary), and null labels
    (the count and an example row).
    """
    kind = labels.type
    if not _is_label_type(kind):
        raise WeightError(
            f"balance_column {column!r} of table {table!r} is of type {kind}: a class-balance column must hold one "
            "label a row (integer, string, boolean, dictionary, date or floating point), not a list, vector, struct "
            "or binary value"
        )
    nulls = np.asarray(labels.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if nulls.any():
        raise WeightError(
            f"balance_column {column!r} of table {table!r} has {int(nulls.sum())} null value(s) in the train split "
            f"(of {len(labels)} rows), e.g. {_example(labels, row_ids, nulls)}: every row needs a label to be "
            "counted. Filter them out (filter=...) or fill them"
        )
    encoded = pc.dictionary_encode(labels)
    indices = encoded.indices.to_numpy(zero_copy_only=False)
    counts = np.bincount(indices, minlength=len(encoded.dictionary))
    return 1.0 / counts[indices]


def read_columns(
    table: Any, columns: list[str], row_ids: np.ndarray, *, table_name: str, version: int | None
) -> dict[str, pa.Array]:
    """Columns ``columns`` of the rows ``row_ids`` (sorted row addresses) of the open, pinned
    ``table``, read in one scan."""
    for column in columns:
        if column not in table.schema.names:
            raise WeightError(
                f"column {column!r} is not in table {table_name!r}; its columns are {', '.join(table.schema.names)}"
            )
    scanned = scan_with_row_ids(table, columns)
    scan_ids = scanned.column("_rowid").to_numpy().astype(np.uint64, copy=False)
    offsets = pa.array(offsets_of(row_ids, scan_ids, table_name=table_name, version=version))
    return {column: scanned.column(column).combine_chunks().take(offsets) for column in columns}


def split_weights(
    table: Any,
    row_ids: np.ndarray,
    *,
    table_name: str,
    version: int | None,
    weight_column: str | None,
    balance_column: str | None,
) -> np.ndarray:
    """The train split's weights (one a row of ``row_ids``, in that order), checked: ``weight_column``'s
    values, times ``1 / count`` of ``balance_column``'s value where that is set."""
    assert weight_column is not None or balance_column is not None
    wanted = list(dict.fromkeys(c for c in (weight_column, balance_column) if c is not None))
    read = read_columns(table, wanted, row_ids, table_name=table_name, version=version)  # one scan for both
    weights = np.ones(len(row_ids))
    if weight_column is not None:
        weights = check_weights(read[weight_column], column=weight_column, table=table_name, row_ids=row_ids)
    if balance_column is not None:
        labels = read[balance_column]
        weights = weights * class_balance(labels, column=balance_column, table=table_name, row_ids=row_ids)
    return weights
