"""The ``neighbors`` setting, validated once: which vector column, how many, which rows may be neighbours.

Pure (no lancedb, torch or Lightning): :class:`~lance_lightning.options.DataOptions` calls
:func:`parse_neighbors` in its checks. What needs the table (the column exists and holds vectors,
``k`` is below the split's rows) is checked at ``setup`` by :mod:`.mine`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NEIGHBOR_MODES = ("auto", "exact", "index")
NEIGHBOR_KEYS = (
    "column",
    "k",
    "exclude_same",
    "where",
    "columns",
    "mode",
    "metric",
    "candidates",
    "refresh_every_n_epochs",
)


@dataclass(frozen=True)
class NeighborSpec:
    """Each train row's ``k`` nearest rows of the split by ``column`` (see docs/guides/neighbors.md).

    ``exclude_same``: rows sharing this column's value are never neighbours (e.g. the label: the
    row's positives); ``where``: only rows of the split matching this SQL predicate may be
    neighbours; ``columns``: the neighbours' columns a batch carries (None: the datamodule's);
    ``mode``: ``"exact"`` (blocks of matrix products), ``"index"`` (the table's vector index) or
    ``"auto"``; ``metric``: ``"l2"``, ``"cosine"`` or ``"dot"``; ``candidates``: index mode's
    candidates a row, re-ranked exactly (None: ``15k``, ``30k`` with ``exclude_same``; more:
    higher recall, slower); ``refresh_every_n_epochs``: with
    ``table_updates="next_epoch"``, mine again from the version an epoch reads every this many epochs
    (None: the lists follow the version: mined again only when the split's rows change).
    """

    column: str
    k: int
    exclude_same: str | None = None
    where: str | None = None
    columns: tuple[str, ...] | None = None
    mode: str = "auto"
    metric: str = "l2"
    candidates: int | None = None
    refresh_every_n_epochs: int | None = None

    def mining(self) -> dict[str, Any]:
        """What decides the lists (with the table version and the split's rows): their key."""
        return {
            "column": self.column,
            "k": self.k,
            "exclude_same": self.exclude_same,
            "where": self.where,
            "mode": self.mode,
            "metric": self.metric,
            "candidates": self.candidates,
        }

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records (plain values): the mining, and when it is redone."""
        return {**self.mining(), "refresh_every_n_epochs": self.refresh_every_n_epochs}


def parse_neighbors(value: Any, *, error: type[ValueError] = ValueError, type_error: type = TypeError) -> Any:
    """``None``, or a :class:`NeighborSpec` from one or a mapping of its fields; errors name the setting."""
    if value is None or isinstance(value, NeighborSpec):
        fields = None if value is None else {k: getattr(value, k) for k in NEIGHBOR_KEYS}
    elif isinstance(value, Mapping):
        fields = dict(value)
    else:
        raise type_error(
            f"neighbors must be a mapping such as {{'column': 'emb', 'k': 4}} or None, got {value!r} "
            f"({type(value).__name__})"
        )
    if fields is None:
        return None
    unknown = sorted(set(map(str, fields)) - set(NEIGHBOR_KEYS))
    if unknown:
        raise error(f"neighbors has unknown key(s) {unknown}; keys are {', '.join(NEIGHBOR_KEYS)}")
    if "column" not in fields or "k" not in fields:
        raise error("neighbors needs 'column' (a vector column of the table) and 'k' (neighbours a row, >= 1)")

    def name(key: str, optional: bool = True) -> str | None:
        got = fields.get(key)
        if got is None and optional:
            return None
        if not isinstance(got, str) or not got.strip():
            raise type_error(f"neighbors['{key}'] must be a non-empty str{' or None' if optional else ''}, got {got!r}")
        return got

    k = fields["k"]
    if isinstance(k, bool) or not hasattr(k, "__index__"):
        raise type_error(f"neighbors['k'] must be an integer >= 1 (neighbours a row), got {k!r}")
    k = int(k.__index__())
    if k < 1:
        raise error(f"neighbors['k'] must be an integer >= 1 (neighbours a row), got {k}")
    columns = fields.get("columns")
    if columns is not None:
        if isinstance(columns, str) or not all(isinstance(c, str) and c for c in columns):
            raise type_error(f"neighbors['columns'] must be a list of column names or None, got {columns!r}")
        columns = tuple(columns)
        if not columns:
            raise error("neighbors['columns'] must name at least one column, or be None (the datamodule's columns)")
    mode = fields.get("mode", "auto")
    if mode not in NEIGHBOR_MODES:
        raise error(f"neighbors['mode'] must be one of {', '.join(map(repr, NEIGHBOR_MODES))}, got {mode!r}")
    from .exact import METRICS

    metric = fields.get("metric", "l2")
    if metric not in METRICS:
        raise error(f"neighbors['metric'] must be one of {', '.join(map(repr, METRICS))}, got {metric!r}")
    candidates = fields.get("candidates")
    if candidates is not None:
        if isinstance(candidates, bool) or not hasattr(candidates, "__index__") or int(candidates.__index__()) < k:
            raise type_error(f"neighbors['candidates'] must be an integer >= k ({k}) or None, got {candidates!r}")
        candidates = int(candidates.__index__())
    refresh = fields.get("refresh_every_n_epochs")
    if refresh is not None:
        if isinstance(refresh, bool) or not hasattr(refresh, "__index__") or int(refresh.__index__()) < 1:
            raise type_error(f"neighbors['refresh_every_n_epochs'] must be an integer >= 1 or None, got {refresh!r}")
        refresh = int(refresh.__index__())
    return NeighborSpec(
        column=name("column", optional=False),
        k=k,
        exclude_same=name("exclude_same"),
        where=name("where"),
        columns=columns,
        mode=mode,
        metric=metric,
        candidates=candidates,
        refresh_every_n_epochs=refresh,
    )
