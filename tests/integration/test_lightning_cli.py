"""``LightningCLI(datamodule_class=LanceDataModule)``: every datamodule argument is a flag."""

from __future__ import annotations

import pytest

from lance_lightning import LanceDataModule
from lance_lightning.app.cli import cli_main
from lance_lightning.app.models import MLPClassifier


@pytest.fixture
def tiny(digits_db):
    uri, table = digits_db(200)
    return ["--data.uri", uri, "--data.table", table, "--data.columns", "[image, label]"]


def test_fit_in_a_subprocess(tiny, run_cli, tmp_path):
    result = run_cli(
        [
            "-m",
            "lance_lightning.app.cli",
            "fit",
            *tiny,
            "--data.batch_size",
            "16",
            "--data.splits",
            "{train: 0.8, val: 0.2}",
            "--model",
            "MLPClassifier",
            "--model.hidden_dims",
            "[32]",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            str(tmp_path / "logs"),
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached" in result.stdout + result.stderr


def test_arguments_reach_the_datamodule(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lance-lightning-cli"])  # the arguments come from `args` alone
    cli = cli_main(
        [
            *tiny,
            "--data.batch_size",
            "16",
            "--data.splits",
            "{kind: hash, columns: [id], weights: {train: 8, val: 2}}",
            "--data.shuffle",
            "block",
            "--data.transform",
            "tests.helpers.double_x",
            "--model",
            "lance_lightning.app.models.MLPClassifier",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path),
        ],
        run=False,
    )
    dm = cli.datamodule
    assert isinstance(dm, LanceDataModule) and isinstance(cli.model, MLPClassifier)
    assert (dm.options.batch_size, dm.options.shuffle, dm.columns) == (16, "block", ["image", "label"])
    assert dm.split_spec.kind == "hash" and dm.split_spec.names == ("train", "val")
    assert callable(dm.transform) and dm.transform.__name__ == "double_x"
    dm.setup("fit")
    assert sum(len(s) for s in dm.splits.values()) == 200


def documented_command() -> list[str]:
    """The ``lance-lightning-cli fit ...`` line of the CLI module's docstring, split as a shell would."""
    import shlex

    from lance_lightning.app import cli

    text = cli.__doc__.replace("\\\n", " ")  # shell line continuations
    line = next(line.strip() for line in text.splitlines() if line.strip().startswith("lance-lightning-cli fit"))
    return shlex.split(line)


def console_script(name: str) -> list[str]:
    """The installed console script next to this Python, else the module it runs."""
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", "lance_lightning.app.cli"]


def test_the_documented_example_runs_as_written(tmp_path):
    """Issue 30: the docstring's own example failed on the default splits (a FrozenMapping)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    demo = [sys.executable, "-m", "lance_lightning.app.demo"]
    demo = subprocess.run(demo, cwd=tmp_path, env=env, capture_output=True)
    assert demo.returncode == 0, demo.stderr[-2000:]
    command = documented_command()
    assert command[0] == "lance-lightning-cli" and "--data.splits" not in command
    result = subprocess.run(
        [*console_script(command[0]), *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_epochs=1` reached" in result.stdout + result.stderr


def test_without_the_extra_one_line_names_it(tmp_path):
    import os
    import subprocess
    import sys

    fake = tmp_path / "no-jsonargparse" / "jsonargparse"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'jsonargparse'\")\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "lance_lightning.app.cli", "fit", "--help"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: lance-lightning-cli needs jsonargparse (No module named 'jsonargparse'): "
        "pip install 'lance-lightning[cli]'"
    ]


def test_a_wrong_table_is_one_line_when_the_datamodule_is_built(tiny, tmp_path):
    import os
    import subprocess
    import sys

    args = [*tiny[:2], "--data.table", "digit", "--model", "MLPClassifier"]
    command = [sys.executable, "-m", "lance_lightning.app.cli", "fit", *args]
    result = subprocess.run(command, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lance-lightning-cli: error: ") and "'digit'" in last and "'digits'" in last, last
    assert not (tmp_path / "lightning_logs").exists()  # no Trainer ran


def test_the_data_seed_follows_seed_everything_42_by_default(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lance-lightning-cli"])
    common = [*tiny, "--model", "MLPClassifier", "--trainer.logger", "false"]
    cli = cli_main(common, run=False)
    cli.datamodule.setup("fit")
    assert cli.datamodule.options.seed == 42
    cli = cli_main([*common, "--seed_everything", "5"], run=False)
    cli.datamodule.setup("fit")
    assert cli.datamodule.options.seed == 5
