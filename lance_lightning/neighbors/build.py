"""The train stage's reader with neighbours: checks, mining (once per node) and the wrapper.

Called by the datamodule (:meth:`~lance_lightning.LanceDataModule._build_stage`) after the split's
own reader is built without the transform; everything about neighbours lives in this package.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .mine import (
    NeighborSettingError,
    check_columns_exist,
    check_split_rows,
    check_vector_column,
    ensure_neighbors,
)
from .reader import NEIGHBORS_KEY, NeighborBatchDataset, NeighborLists


def neighbor_columns(options: Any, columns: Sequence[str]) -> list[str]:
    """The columns of each neighbour a batch carries: ``neighbors['columns']``, else the batch's."""
    spec = options.neighbors
    return list(spec.columns) if spec.columns is not None else list(columns)


def check_neighbors(options: Any, table_name: str, schema: Any, columns: Sequence[str]) -> None:
    """What ``setup`` can check before mining: the columns named, and no column called ``neighbors``."""
    spec = options.neighbors
    check_vector_column(table_name, schema, spec.column)
    check_columns_exist(table_name, schema, spec)
    if NEIGHBORS_KEY in columns:
        raise NeighborSettingError(
            f"table {table_name!r} has a column {NEIGHBORS_KEY!r}, the batch key neighbours are put under: leave it "
            "out of columns=, or rename it"
        )


def neighbor_reader(
    options: Any,
    split: Any,
    *,
    inner: Any,
    columns: Sequence[str],
    split_name: str,
    transform: Any,
    table: Any,
    build_reader: Callable[..., Any],
    mined_from: Any = None,
    progress: bool = True,
) -> NeighborBatchDataset:
    """``inner`` (the split's reader, no transform) wrapped to add each row's neighbours.
    ``build_reader(columns)``: a reader of the split with those columns and no transform, for
    neighbour columns that are not the batch's. ``mined_from``: the source (a pinned version) to
    mine from, when not the split's own (refresh not due: the previous epoch's lists)."""
    from ..stage import default_stage_root

    spec = options.neighbors
    source = split.source if mined_from is None else mined_from
    opened = table if (table is not None and mined_from is None) else source.open()
    check_neighbors(options, source.name, opened.schema, columns)
    check_split_rows(spec, source.name, split_name, len(split))
    wanted = neighbor_columns(options, columns)
    if set(wanted) <= set(columns):
        columns_reader = None
        select = None if list(wanted) == list(columns) else wanted
    else:
        columns_reader, select = build_reader(wanted), None
    root = options.cache if options.cache is not None else default_stage_root()
    path = ensure_neighbors(
        source, opened, split.row_ids, spec, root=os.fspath(root), split_name=split_name, progress=progress
    )
    return NeighborBatchDataset(
        inner, NeighborLists(path), columns_reader=columns_reader, columns=select, transform=transform
    )
