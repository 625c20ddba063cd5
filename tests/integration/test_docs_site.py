"""The documentation site: it builds in strict mode, its plots render in a browser, its figures
come from committed benchmark records only, and its runnable guides run as written.

The browser check needs Chromium (Debian's ``chromium`` package; ``.ci/run`` installs it where it
can) and is skipped with the reason when it is absent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PERF = DOCS / "performance"
RECORDS = sorted((PERF / "records").glob("*.json"))
# Measures each <img> once the page has loaded: decoded size / laid-out size, and marks the body.
PROBE = (
    '<script>window.addEventListener("load", () => { for (const img of document.images) {'
    " const box = img.getBoundingClientRect();"
    ' img.dataset.rendered = img.naturalWidth + "x" + img.naturalHeight + "/"'
    ' + Math.round(box.width) + "x" + Math.round(box.height); }'
    ' document.body.dataset.probed = "yes"; });</script>'
)


def _figures_module():
    sys.path.insert(0, str(PERF))
    try:
        import make_figures
    finally:
        sys.path.remove(str(PERF))
    return make_figures


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as CI builds it: ``mkdocs build --strict``."""
    pytest.importorskip("mkdocs", reason="the docs extra is not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return out


@pytest.mark.slow
def test_site_builds_strict_with_the_api_reference_and_the_plots(site):
    api = (site / "reference" / "api.html").read_text()
    for name in (
        "LanceDataModule",
        "LancePredictionWriter",
        "LoaderMonitor",
        "TableChangedError",
        "MissingTableError",
        "ResumeRefusedError",
        "BatchKeysError",
        "StagingBusyError",
    ):
        assert re.search(rf'id="lance_lightning\.[a-z_.]+\.{name}"', api), name
    assert "batch_size" in api  # the parameters come from the docstrings
    figures = _figures_module().FIGURES
    for name in figures:
        svg = site / "performance" / f"{name}.svg"
        assert svg.is_file() and svg.read_bytes().lstrip().startswith(b"<?xml"), svg
    page = (site / "performance" / "index.html").read_text()
    assert "perf-table:" not in page and "perf-figure:" not in page  # every marker was replaced


@pytest.mark.slow
def test_performance_plots_render_in_headless_chromium(site, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the plots were not checked in a browser")
    page = site / "performance" / "index.html"
    page.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1200,2000",
            "--virtual-time-budget=15000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = result.stdout
    assert 'data-probed="yes"' in dom, (result.returncode, result.stderr[-2000:])
    rendered = dict(re.findall(r'<img[^>]*src="([^"]+\.svg)"[^>]*data-rendered="([^"]+)"', dom))
    for name in _figures_module().FIGURES:
        size = rendered.get(f"{name}.svg")
        assert size, (name, rendered)
        (natural_w, natural_h), (box_w, box_h) = (map(int, part.split("x")) for part in size.split("/"))
        # Decoded by the browser (a missing or broken SVG has no natural size) and laid out visibly.
        assert natural_w > 100 and natural_h > 100 and box_w > 100 and box_h > 100, (name, size)


def test_every_figure_comes_from_a_committed_record():
    """Records name their command, commit and date; the page shows every record; no plot is committed."""
    assert RECORDS
    for path in RECORDS:
        record = json.loads(path.read_text())
        assert record["command"].startswith(("python benchmarks/", "lance-lightning-")), path.name
        assert re.fullmatch(r"[0-9a-f]{7}.*", record["commit"]), path.name
        assert re.search(r"\d{4}-\d{2}-\d{2}", record["published"]["date"]), path.name
        for row in record["rows"]:
            assert set(row) >= {c["key"] for c in record["columns"]} - {"rss_file_mb"}, (path.name, row)
    markers = set(re.findall(r"<!-- perf-table: (\w+) -->", (PERF / "index.md").read_text()))
    assert markers == {p.stem for p in RECORDS}
    # The plots are drawn at build time (the hand-drawn data-flow diagram in docs/assets/ is source).
    tracked = subprocess.run(
        ["git", "ls-files", "docs/performance"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    assert tracked and not [f for f in tracked if f.endswith((".svg", ".png"))], "generated figures are committed"
    # ...and every record the build reads is committed (a .gitignore pattern such as data/ would
    # leave a fresh clone without it).
    untracked = {f"docs/performance/records/{p.name}" for p in RECORDS} - set(tracked)
    assert not untracked, f"records not committed: {sorted(untracked)}"


def test_the_resume_page_states_every_setting_as_declared():
    """docs/concepts/resume.md's table gives each setting the outcome ``options.py`` declares for it."""
    from lance_lightning.options import resume_rules

    page = (DOCS / "concepts" / "resume.md").read_text().split("## Every setting, on resume", 1)[1]
    stated = {}
    for names, outcome in re.findall(r"^\| ((?:`\w+`(?:, )?)+) \| (exact|re-cut|refused) \|", page, re.M):
        for name in re.findall(r"`(\w+)`", names):
            stated[name] = outcome
    declared = {name: rule.kind for name, rule in resume_rules().items()}
    assert stated == declared


def test_readme_example_is_the_getting_started_script():
    def first_python_block(text: str, after: str) -> str:
        return re.search(r"```python\n(.*?)```", text.split(after, 1)[1], re.S).group(1)

    readme = first_python_block((ROOT / "README.md").read_text(), "## Train on your own table")
    guide = first_python_block((DOCS / "getting-started.md").read_text(), "## Your first script")
    assert readme == guide


@pytest.mark.slow
@pytest.mark.long  # three training/predict scripts: ~60 s on 2 busy cores
def test_the_runnable_guides_run_as_written(tmp_path):
    """Getting started's script writes my_db/vectors; the plain-PyTorch and inference guides read it."""
    for page in ("getting-started.md", "guides/plain-pytorch.md", "guides/inference.md"):
        code = re.search(r"```python\n(.*?)```", (DOCS / page).read_text(), re.S).group(1)
        script = tmp_path / (Path(page).stem + ".py")
        script.write_text(code)
        result = subprocess.run(
            [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, (page, result.stderr[-3000:])
        if page.endswith("plain-pytorch.md"):
            assert re.search(r"^epoch 2: loss \d", result.stdout, re.M), result.stdout[-2000:]
        if page.endswith("inference.md"):
            assert "fixed_size_list<item: float>[8]" in result.stdout, result.stdout[-2000:]
