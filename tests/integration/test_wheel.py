"""The built wheel works on its own: configs inside, only ``[demo]`` installed, no checkout near.

The wheel is built from a copy of the source tree, installed with ``pip --no-index`` into a fresh
venv, and its console script runs the main job from an empty directory. No network: the fresh
venv sees this test venv's dependencies (torch & co.) through one ``.pth`` line pointing at a
directory of symlinks to them, minus this package, its editable-install hooks and the test tools,
so pip still checks that every declared dependency (and the ``demo`` extra) is satisfied.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"

# Installed into the fresh venv from the wheel: never shared.
NOT_SHARED = {"lance-lightning"}
# In the dev extra (the wheel build below needs it) but also a requirement of torch: shared.
SHARED_ANYWAY = {"setuptools"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dev_only() -> set[str]:
    """Distributions in the ``dev`` extra that neither the runtime nor ``demo`` declares
    (pytest, hypothesis, moto, ruff, psutil, jsonargparse, ...), from the installed metadata."""
    by_extra: dict[str, set[str]] = {}
    for req in importlib.metadata.requires("lance-lightning") or []:
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        name = _canonical(re.match(r"[A-Za-z0-9._-]+", req).group())
        by_extra.setdefault(extra.group(1) if extra else "", set()).add(name)
    return by_extra["dev"] - by_extra[""] - by_extra["demo"] - SHARED_ANYWAY


def _shared_site_packages(target: Path) -> Path:
    """A directory of symlinks to every entry of this venv's site-packages except this package
    (its dist-info, ``__editable__`` finder and ``.pth``), any ``.pth`` and the dev-only tools.

    pip and setuptools are shared too: torch requires setuptools>=77, newer than the one
    ``ensurepip`` would put in the fresh venv (so it is made without pip), and this pip installs
    into whichever interpreter runs it."""
    site = Path(sysconfig.get_paths()["purelib"])
    skip_dists = {_canonical(n) for n in NOT_SHARED} | _dev_only()
    skipped: set[str] = set()
    for dist in importlib.metadata.distributions(path=[str(site)]):
        if _canonical(dist.metadata["Name"]) in skip_dists:
            # Its packages, modules and .dist-info (scripts outside site-packages start with "..").
            skipped |= {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    target.mkdir()
    for entry in site.iterdir():
        name = entry.name
        editable = name.startswith(("__editable__", "lance_lightning")) or name.endswith(".pth")
        if name in skipped or editable or name == "__pycache__":
            continue
        (target / name).symlink_to(entry)
    return target


def _clean_env(venv_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
    env["PATH"] = f"{venv_dir / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1")
    return env


def _run(args: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_installs_with_demo_and_runs_the_main_job_from_an_empty_directory(tmp_path):
    # 1. The wheel, built from a copy of the tree (app/conf stays a link to the top-level conf/).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(CONF, src / "conf", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(
        ROOT / "lance_lightning", src / "lance_lightning", symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    assert (src / "lance_lightning" / "app" / "conf").is_symlink()
    wheels = tmp_path / "wheels"
    # No build isolation (that would download setuptools): this venv's setuptools, checked
    # against [build-system] requires.
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            src,
            "--no-deps",
            "--no-build-isolation",
            "--check-build-dependencies",
            "--no-index",
            "-q",
            "-w",
            wheels,
        ]
    )
    (wheel,) = wheels.glob("lance_lightning-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("lance_lightning/app/conf/")}
    expected = {f"lance_lightning/app/conf/{p.relative_to(CONF).as_posix()}" for p in CONF.rglob("*") if p.is_file()}
    assert shipped == expected

    # 2. A fresh venv that borrows this one's dependencies through a .pth line, then the wheel
    #    with the demo extra: --no-index, so pip must find every requirement already satisfied.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    fresh_site = Path(
        _run(
            [env_dir / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    shared = _shared_site_packages(tmp_path / "shared")
    (fresh_site / "shared_from_test_venv.pth").write_text(f"{shared}\n")
    env = _clean_env(env_dir)
    _run(
        [env_dir / "bin" / "python", "-m", "pip", "install", "--no-index", "-q", f"{wheel}[demo]"],
        env=env,
        cwd=tmp_path,
    )

    # 3. The main job from an empty directory, by its console script.
    work = tmp_path / "empty"
    work.mkdir()
    result = _run([env_dir / "bin" / "lance-lightning-train", "trainer.max_epochs=1"], env=env, cwd=work, timeout=300)
    accuracy = re.search(r"test metrics: test/acc=(\d\.\d+)", result.stdout)
    assert accuracy, result.stdout[-2000:]
    # Seeded (seed 42): one epoch printed 0.8889 (160 of 180 test rows) on this project's 2-core
    # CPU machine (commit 9e0343d); the bound only says it learned (chance is 0.1).
    assert float(accuracy.group(1)) >= 0.75, result.stdout[-2000:]
    assert (work / "data" / "demo" / "digits.lance").is_dir()

    # The job imported the installed package and read the wheel's configs, not this checkout's:
    # Hydra records its config directory, which train.py derives from its own __file__
    # (lance_lightning/app/conf next to the imported train.py).
    (hydra_yaml,) = work.glob("outputs/train/*/.hydra/hydra.yaml")
    sources = yaml.safe_load(hydra_yaml.read_text())["hydra"]["runtime"]["config_sources"]
    (main_conf,) = [Path(s["path"]) for s in sources if s["provider"] == "main"]
    assert main_conf == fresh_site / "lance_lightning" / "app" / "conf", main_conf
    assert not main_conf.is_symlink() and (main_conf / "config.yaml").is_file()
    assert (main_conf.parent / "train.py").is_file() and not main_conf.resolve().is_relative_to(ROOT)
