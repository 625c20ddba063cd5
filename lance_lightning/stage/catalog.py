"""The stages of a root as a user sees them: what each holds, how big, when last used, whether a
running job holds it, whether its table still exists; and clearing them without touching a held one.

What ``lance-lightning-stages`` (:mod:`lance_lightning.app.stages`) prints and does; eviction
(:func:`.store.evict_for`) uses :func:`.store.table_exists` to remove the stages of deleted tables first.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import store


@dataclass(frozen=True)
class StageInfo:
    """One stage directory under a root, from its manifest and its lease (nothing is verified)."""

    path: Path
    table: str | None
    location: str | None  # the database, as the stage key normalised it (no secrets)
    version: int | None
    split: str | None
    rows: int | None
    columns: list[str]
    bytes: int  # on disk
    last_used: float  # epoch seconds: the lease file's modification time (0: never)
    held: bool  # a running process holds a lease on it: never removed
    table_exists: bool | None  # None: not known without a request (object stores)
    problem: str | None  # the manifest cannot be read (a damaged stage: rebuilt at the next setup)

    def matches_table(self, table: str) -> bool:
        """``table`` is this stage's table name, or its database location (or a path to it)."""
        if table == self.table or self.location is None:
            return table == self.table
        if table == self.location:
            return True
        full = store.table_location(table)
        return full == self.location or (self.table is not None and full == f"{self.location}/{self.table}.lance")


def describe_stage(path: Path) -> StageInfo:
    """What :func:`list_stages` shows of the stage at ``path``."""
    meta, problem = store.read_manifest(path)
    meta = meta or {}
    rows = meta.get("rows")
    return StageInfo(
        path=path,
        table=meta.get("table"),
        location=meta.get("uri"),
        version=meta.get("version"),
        split=meta.get("split"),
        rows=rows if isinstance(rows, int) else None,
        columns=list(meta.get("columns") or []),
        bytes=store.directory_bytes(path),
        last_used=store.last_used(path),
        held=store.in_use(path),
        table_exists=store.table_exists(meta) if meta else None,
        problem=problem,
    )


def list_stages(root: str | os.PathLike[str]) -> list[StageInfo]:
    """Every stage under ``root``, most recently used first."""
    return sorted((describe_stage(p) for p in store.stages(Path(root))), key=lambda s: -s.last_used)


def clear_stages(
    root: str | os.PathLike[str],
    *,
    table: str | None = None,
    older_than_days: float | None = None,
    now: float | None = None,
) -> tuple[list[StageInfo], list[StageInfo]]:
    """Remove the stages under ``root`` that match (all; those of ``table``, a name or database
    location; those last used more than ``older_than_days`` ago), under the root's lock (no fill
    runs meanwhile), skipping any stage a running job holds. Returns ``(removed, held)``. Clearing
    everything also removes what fills that died left (``.tmp-*``)."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    now = time.time() if now is None else now
    removed: list[StageInfo] = []
    held: list[StageInfo] = []
    with store.root_lock(root):
        for info in list_stages(root):
            if table is not None and not info.matches_table(table):
                continue
            if older_than_days is not None and now - info.last_used < older_than_days * 86400:
                continue
            freed = store.free_if_unused(info.path)
            (held if freed is None else removed).append(info)
        if table is None and older_than_days is None:
            for leftover in root.glob(f"{store.TMP_PREFIX}*"):  # no fill runs while the lock is held
                shutil.rmtree(leftover, ignore_errors=True)
    return removed, held
