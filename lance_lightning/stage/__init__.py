"""A node-local, verified, memory-mapped copy of a split: what every exact shuffle gathers from.

``ensure_stage(source, table, row_ids, columns, root=..., budget_bytes=..., split_name=...)`` copies
the split's selected columns at the pinned version once per node (one pass over the table, under an
exclusive ``flock`` on ``<root>/.lock``, into ``.tmp-<key>``, renamed into place) and returns its
directory; :class:`StagedRows` reads it by split position in any process (it pickles as its path).

* Key: table identity (its normalised location, endpoint, name, version and its commit time),
  columns, filter, the split's row addresses, layout: any change gives a new stage, nothing stale
  is read; every spelling of one location gives the same stage.
* Verified: every file's size, modification time and CRC-32 against ``manifest.json`` at
  ``ensure_stage``; a stage that fails (changed, truncated, missing or extra file, unfinished fill)
  is removed and rebuilt once with a :class:`StageWarning`. Every gather checks each mapped file's
  size and modification time (``fstat`` of the descriptor it was mapped from) before and after: a
  change raises :class:`StageError`.
* Budget: before a fill, stages are evicted until the new one fits ``budget_bytes``: those whose
  table is gone first, then the least recently used; a stage some process holds a :class:`Lease`
  on is never evicted. When it cannot fit, :class:`StageBudgetError` (read from the table
  instead); a stage directory that cannot be written or a disk that fills up,
  :class:`StageDiskError` (a StageBudgetError and a StageError).
* Managed: :mod:`.catalog` lists and clears stages (``lance-lightning-stages``).
* Shared: the files are memory-mapped, so every rank and worker of a node reads one copy in the
  page cache; ``prefault=True`` reads every page at open (``in_memory``).
"""

from .fill import ensure_stage, hold_again, release_stage
from .plan import LAYOUTS, column_plan, estimate_stage_bytes
from .store import (
    Lease,
    StageBudgetError,
    StageDiskError,
    StageError,
    StageWarning,
    budget_problem,
    default_budget_bytes,
    default_stage_root,
    fits,
    lease,
    stage_key,
    verify_stage,
)

__all__ = [
    "LAYOUTS",
    "Lease",
    "StageBudgetError",
    "StageDiskError",
    "StageError",
    "StageWarning",
    "StagedRows",
    "budget_problem",
    "column_plan",
    "default_budget_bytes",
    "default_stage_root",
    "ensure_stage",
    "estimate_stage_bytes",
    "fits",
    "hold_again",
    "lease",
    "release_stage",
    "stage_key",
    "verify_stage",
]


def __getattr__(name: str) -> object:
    """:class:`StagedRows` is imported when first asked for: it needs torch, which listing or
    clearing stages (``lance-lightning-stages``) does not."""
    if name == "StagedRows":
        from .reader import StagedRows

        return StagedRows
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
