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
