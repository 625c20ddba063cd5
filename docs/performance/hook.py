"""MkDocs hook: the performance page's tables and plots, made at build time by make_figures.py.

``<!-- perf-table: NAME -->`` in a page becomes the table of ``records/NAME.json`` with its setup,
notes and source line; ``<!-- perf-figure: NAME -->`` becomes the plot ``NAME.svg`` (generated
into the site beside the page, never committed) with a caption naming the command and commit.
An unknown name fails the build.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from mkdocs.structure.files import File

_SPEC = importlib.util.spec_from_file_location("make_figures", Path(__file__).with_name("make_figures.py"))
make_figures = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(make_figures)

PAGE = "performance/index.md"
MARKER = re.compile(r"<!-- perf-(table|figure): (\w+) -->")


def on_files(files, config):
    """Add each plot to the site as a generated file beside the performance page."""
    for name, svg in make_figures.figures().items():
        files.append(File.generated(config, f"performance/{name}", content=svg))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != PAGE:
        return markdown
    tables = make_figures.tables()

    def expand(match: re.Match) -> str:
        kind, name = match.groups()
        if kind == "table":
            if name not in tables:
                raise KeyError(f"{PAGE}: no table {name!r} in make_figures.tables(): {sorted(tables)}")
            return tables[name]
        if name not in make_figures.FIGURES:
            raise KeyError(f"{PAGE}: no figure {name!r} in make_figures.FIGURES: {sorted(make_figures.FIGURES)}")
        alt = make_figures.FIGURES[name][2]
        caption = make_figures.caption(name)
        return (
            f'<figure markdown="span" class="perf-figure" id="fig-{name}">\n'
            f"  ![{alt}]({name}.svg)\n"
            f'  <figcaption markdown="span">{caption}</figcaption>\n'
            "</figure>"
        )

    return MARKER.sub(expand, markdown)
