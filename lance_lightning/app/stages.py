"""``lance-lightning-stages``: list the node's stages, and clear them.

::

    lance-lightning-stages list                       # table, version, split, rows, size, last use, state
    lance-lightning-stages list --json
    lance-lightning-stages clear --all
    lance-lightning-stages clear --table toy          # a table name, or its database's path / URI
    lance-lightning-stages clear --older-than 7       # days since a job last used it
    lance-lightning-stages --cache /nvme/stages list  # a cache= other than the default

Stages live in ``$XDG_CACHE_HOME/lance-lightning/stages`` (``~/.cache/...``) unless a job set
``cache=``. A stage a running job holds is never removed (it is listed as held, and ``clear``
says it kept it). The logic is :mod:`lance_lightning.stage.catalog`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime

from ..stage import default_stage_root
from ..stage.catalog import StageInfo, clear_stages, list_stages


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def _ago(seconds_since_epoch: float, now: float) -> str:
    if not seconds_since_epoch:
        return "never"
    days = (now - seconds_since_epoch) / 86400
    when = datetime.fromtimestamp(seconds_since_epoch).strftime("%Y-%m-%d %H:%M")
    return f"{when} ({days:.1f} d ago)" if days >= 0.05 else f"{when} (just now)"


def _state(info: StageInfo) -> str:
    if info.problem is not None:
        return f"damaged: {info.problem}"
    parts = []
    if info.held:
        parts.append("held by a running job")
    if info.table_exists is False:
        parts.append("table gone")
    return ", ".join(parts) or "-"


def format_stages(stages: Sequence[StageInfo], root: str, now: float | None = None) -> str:
    """The table ``list`` prints."""
    now = time.time() if now is None else now
    if not stages:
        return f"no stages under {root}"
    rows = [("TABLE", "VERSION", "SPLIT", "ROWS", "SIZE", "LAST USED", "STATE", "PATH")]
    for s in stages:
        rows.append(
            (
                str(s.table),
                str(s.version),
                str(s.split),
                "-" if s.rows is None else f"{s.rows:,}",
                _size(s.bytes),
                _ago(s.last_used, now),
                _state(s),
                str(s.path),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
    total = sum(s.bytes for s in stages)
    lines.append(f"{len(stages)} stage(s), {_size(total)} under {root}")
    return "\n".join(lines)


def _as_json(info: StageInfo) -> dict:
    return {
        "path": str(info.path),
        "table": info.table,
        "location": info.location,
        "version": info.version,
        "split": info.split,
        "rows": info.rows,
        "columns": info.columns,
        "bytes": info.bytes,
        "last_used": info.last_used,
        "held": info.held,
        "table_exists": info.table_exists,
        "problem": info.problem,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lance-lightning-stages", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache",
        default=None,
        help="the stage directory (a job's cache=); default: $XDG_CACHE_HOME/lance-lightning/stages",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the stages, most recently used first")
    listing.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    clear = commands.add_parser("clear", help="remove stages no running job holds")
    clear.add_argument("--all", action="store_true", help="every stage (and what dead fills left)")
    clear.add_argument("--table", default=None, help="the stages of this table (its name, or its database path/URI)")
    clear.add_argument("--older-than", type=float, default=None, metavar="DAYS", help="last used more than DAYS ago")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``lance-lightning-stages`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    root = args.cache if args.cache is not None else str(default_stage_root())
    if args.command == "list":
        stages = list_stages(root)
        print(json.dumps([_as_json(s) for s in stages], indent=1) if args.json else format_stages(stages, root))
        return 0
    if not args.all and args.table is None and args.older_than is None:
        parser.error("clear needs --all, --table NAME or --older-than DAYS")
    if args.older_than is not None and args.older_than < 0:
        parser.error(f"--older-than is a number of days >= 0, got {args.older_than}")
    removed, held = clear_stages(root, table=args.table, older_than_days=args.older_than)
    for info in removed:
        print(f"removed {info.path} ({info.table} v{info.version}, split {info.split}, {_size(info.bytes)})")
    for info in held:
        print(f"kept {info.path}: a running job holds it")
    print(f"{len(removed)} stage(s) removed, {_size(sum(s.bytes for s in removed))} freed; {len(held)} held, kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
