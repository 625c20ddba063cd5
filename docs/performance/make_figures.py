"""The performance page's tables and plots, made from the benchmark output in ``records/*.json``.

The one source of every measured figure on the documentation site. Each JSON file is one
benchmark run as published: the command, the commit of the code it measured, when it was
published, the machine, and its rows. The site's build calls :func:`tables` and
:func:`figures` (through ``hook.py``); nothing generated is committed.

Run by hand to look at the output::

    python docs/performance/make_figures.py --out /tmp/figures   # one .svg a figure, one .md a table
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

RECORDS = Path(__file__).resolve().parent / "records"


def load(name: str) -> dict[str, Any]:
    """One benchmark record, ``records/<name>.json``."""
    return json.loads((RECORDS / f"{name}.json").read_text())


# -- tables ----------------------------------------------------------------------------------


def _rate(v: float) -> str:
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.1f}k" if v < 1e5 else f"{v / 1e3:.0f}k"


_FORMATS: dict[str, Callable[[Any], str]] = {
    "text": str,
    "int": lambda v: f"{v:,}",
    "rate": _rate,
    "ratio": lambda v: f"{v:.2f}×",
    "ratio1": lambda v: f"{v:.1f}×",
    "seconds": lambda v: f"{v:.2f}",
    "float1": lambda v: f"{v:.1f}",
    "float3": lambda v: f"{v:.3f}",
    "signed3": lambda v: f"{v:+.3f}",
    "pct": lambda v: f"{100 * v:.2g}%" if v < 1 else "100%",
}


def markdown_table(record: dict[str, Any], columns: str = "columns", rows: str = "rows") -> str:
    """A record's rows as a Markdown table (``extra_columns``/``extra_rows`` for its second one)."""
    cols = record[columns]
    lines = ["| " + " | ".join(c["label"] for c in cols) + " |", "|" + "---|" * len(cols)]
    for row in record[rows]:
        cells = []
        for c in cols:
            value = row.get(c["key"])
            cells.append("" if value is None or value == "" else _FORMATS[c["format"]](value))
        lines.append("| " + " | ".join(cells).replace("\n", " ") + " |")
    return "\n".join(lines)


def source_line(record: dict[str, Any], name: str) -> str:
    """What was run, on which commit, and when it was published: shown under every table and plot."""
    commands = "; ".join(f"`{c.strip()}`" for c in record["command"].split(";"))
    published = record["published"]
    when = f"published in `{published['commit']}`, {published['date']}" if published["commit"] else published["date"]
    return (
        f"*Command:* {commands}. *Commit:* `{record['commit']}` ({when}). *Machine:* {record['machine']}. "
        f"[Data](records/{name}.json)."
    )


def tables() -> dict[str, str]:
    """The table of every record in ``records/``, by the name its page marker uses (the file's stem)."""
    out = {}
    for path in sorted(RECORDS.glob("*.json")):
        name = path.stem
        record = load(name)
        parts = [f"*Setup:* {record['setup']}.", "", markdown_table(record)]
        if "extra_columns" in record:
            parts += ["", markdown_table(record, "extra_columns", "extra_rows")]
        parts += [""] + [f"- {note}" for note in record["notes"]] + ["", source_line(record, name)]
        out[name] = "\n".join(parts)
    return out


# -- plots -----------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "lance-lightning", "svg.fonttype": "path", "font.size": 9})
    return plt


def _svg(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    fig.clf()
    return buf.getvalue()


def throughput_by_reader() -> bytes:
    """Horizontal bars: rows/s of every reader at 1M rows, a line at the Lance scan."""
    plt = _pyplot()
    record = load("throughput_1m")
    rows = sorted(record["rows"], key=lambda r: r["rows_per_s"])
    labels = [f"{r['short']}, {r['workers']} workers" for r in rows]
    colors = ["#4c72b0" if r["workers"] == 0 else "#dd8452" for r in rows]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.barh(labels, [r["rows_per_s"] for r in rows], color=colors)
    scan = next(r["rows_per_s"] for r in rows if r["short"].startswith("Lance scan"))
    ax.axvline(scan, color="grey", linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("rows/s (second epoch, median of 3 rounds; log scale)")
    ax.set_title("Throughput by reader, 1M rows (blue: 0 workers, orange: 2 workers; dashed: Lance scan)")
    for i, r in enumerate(rows):
        ax.text(r["rows_per_s"] * 1.05, i, _rate(r["rows_per_s"]), va="center", fontsize=8)
    ax.set_xlim(right=max(r["rows_per_s"] for r in rows) * 3)
    return _svg(fig)


def throughput_by_size() -> bytes:
    """Grouped bars: rows/s of the default and its peers at 1M and 10M rows."""
    plt = _pyplot()
    import numpy as np

    record = load("throughput_by_size")
    rows = record["rows"]
    y = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ax.barh(y - 0.2, [r["rows_1m"] for r in rows], height=0.4, label="1M rows", color="#4c72b0")
    ax.barh(y + 0.2, [r["rows_10m"] for r in rows], height=0.4, label="10M rows", color="#55a868")
    ax.set_yticks(y, [r["reader"] for r in rows])
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("rows/s (second epoch, median; log scale)")
    ax.set_title("Throughput by table size (quiet machine)")
    ax.legend(loc="lower right")
    return _svg(fig)


def shuffle_quality() -> bytes:
    """Three panels: how spread, how many table regions and how mixed a batch is, by mode."""
    plt = _pyplot()
    record = load("shuffle_quality")
    rows = record["rows"]
    modes = [r["mode"] for r in rows]
    panels = [
        ("nn_x_uniform", "nearest neighbour gap\n(× uniform)"),
        ("regions", "4,096-row table regions\na batch"),
        ("label_entropy", "label entropy, table in\nlabel order (1 = mixed)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8), layout="constrained")
    for ax, (key, title) in zip(axes, panels):
        ax.bar(modes, [r[key] for r in rows], color=["#4c72b0", "#dd8452", "#8c8c8c"])
        ax.set_title(title)
    fig.suptitle("Randomness of a batch by shuffle mode (1M rows, batch 1024, rank 0 of 1)")
    return _svg(fig)


def images_by_reader() -> bytes:
    """Three panels a reader, heavy rows (JPEG crops decoded in the loader): images/s against the
    decode limit, first-batch seconds, peak RSS of the main process."""
    plt = _pyplot()
    record = load(IMAGES_RECORD)
    rows = sorted(record["rows"], key=lambda r: r["images_per_s"])
    labels = [r["short"] for r in rows]
    decode = [r for r in rows if r["short"].startswith("decode limit")]
    limit = max(decode, key=lambda r: r["workers"])["images_per_s"] if decode else None
    colors = ["#8c8c8c" if r["short"].startswith("decode limit") else "#4c72b0" for r in rows]
    colors = ["#dd8452" if r["short"].startswith("lance-lightning") else c for r, c in zip(rows, colors)]
    fig, axes = plt.subplots(1, 3, figsize=(9, 0.42 * len(rows) + 1.2), sharey=True, layout="constrained")
    panels = [
        ("images_per_s", "images/s (median)", _rate),
        ("first_batch_s", "first batch s (median)", lambda v: f"{v:.2f}"),
        ("peak_rss_mb", "peak RSS MB, main process", lambda v: f"{v:,.0f}"),
    ]
    for ax, (key, title, fmt) in zip(axes, panels):
        values = [r.get(key) for r in rows]
        ax.barh(labels, [v or 0 for v in values], color=colors)
        top = max((v for v in values if v is not None), default=1)
        for i, v in enumerate(values):
            ax.text((v or 0) + top * 0.02, i, "n/a" if v is None else fmt(v), va="center", fontsize=8)
        ax.set_xlim(right=top * 1.35)
        ax.set_title(title)
    if limit:
        axes[0].axvline(limit, color="grey", linestyle="--", linewidth=1)
    fig.suptitle(f"{record['title']} (orange: lance-lightning; grey: the decode alone; dashed: decode limit)")
    return _svg(fig)


IMAGES_RECORD = "images_50k"


FIGURES: dict[str, tuple[Callable[[], bytes], str, str]] = {
    # name: (plot, the record it draws, alt text)
    "throughput_by_reader": (throughput_by_reader, "throughput_1m", "Rows per second of every reader at 1M rows"),
    "throughput_by_size": (throughput_by_size, "throughput_by_size", "Rows per second at 1M and 10M rows"),
    "shuffle_quality": (shuffle_quality, "shuffle_quality", "How random a batch is under each shuffle mode"),
    "images_by_reader": (
        images_by_reader,
        IMAGES_RECORD,
        "Images per second, first batch and main-process memory of every reader, JPEG crops decoded in the loader",
    ),
}


def figures() -> dict[str, bytes]:
    """Every plot as SVG bytes, by ``<name>.svg``."""
    return {f"{name}.svg": plot() for name, (plot, _, _) in FIGURES.items()}


def caption(name: str) -> str:
    """The caption under a figure: what it shows, the command and the commit."""
    _, record_name, alt = FIGURES[name]
    return f"{alt}. " + source_line(load(record_name), record_name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="directory for the .svg figures and .md tables")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, svg in figures().items():
        (args.out / name).write_bytes(svg)
    for name, table in tables().items():
        (args.out / f"{name}.md").write_text(table + "\n")
    print(f"wrote {len(FIGURES)} figures and {len(tables())} tables to {args.out}")


if __name__ == "__main__":
    main()
