"""The Hydra configs in conf/: every group composes and instantiates; the schema refuses typos;
``train(cfg)`` fits, tests and logs the shard plan on a tiny on-disk table."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate

from lance_lightning import LanceDataModule
from lance_lightning.app.config import (
    ConfigKeyError,
    DataConfig,
    TrainerConfig,
    check_config,
    omegaconf_type,
)
from lance_lightning.app.models import MLPClassifier
from lance_lightning.app.train import instantiate_group, train

CONF = Path(__file__).resolve().parents[2] / "conf"


def options(group: str) -> list[str]:
    """Every option of a config group, straight from the conf/ directory."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(overrides: list[str], *, hydra: bool = False):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF), job_name="test"):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


@pytest.fixture
def tiny(digits_db, tmp_path):
    """Overrides that point the job at a 200-row table and write into tmp_path."""
    uri, table = digits_db(200)
    return [f"data.uri={uri}", f"data.table={table}", f"paths.output_dir={tmp_path / 'run'}"]


def test_conf_has_the_expected_groups():
    assert set(options("trainer")) >= {"default", "cpu", "gpu", "ddp", "ddp_sim"}
    assert set(options("logger")) >= {"csv", "none"}
    assert {"data", "model", "trainer", "callbacks", "logger", "experiment", "debug"} <= {
        p.name for p in CONF.iterdir() if p.is_dir()
    }


def test_defaults(tmp_path):
    cfg = compose_cfg([], hydra=True)
    assert cfg.data._target_ == "lance_lightning.LanceDataModule"
    assert (cfg.data.uri, cfg.data.table) == ("data/demo", "digits")
    assert dict(cfg.data.splits) == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert list(cfg.data.columns) == ["image", "label"]
    assert cfg.hydra.job.chdir is False  # data/demo stays relative to where the command runs
    assert cfg.hydra.runtime.choices["trainer"] == "default"
    assert list(cfg.logger) == ["csv"]


@pytest.mark.parametrize("option", options("data"))
def test_data_group(option, tiny):
    cfg = compose_cfg([f"data={option}", *tiny])
    dm = instantiate(cfg.data)
    assert isinstance(dm, LanceDataModule)
    dm.setup("fit")
    assert sum(len(s) for s in dm.splits.values()) == 200


@pytest.mark.parametrize("option", options("data/splits"))
def test_split_options_replace_the_spec_whole(option, digits_db, tmp_path):
    uri, table = digits_db(200, "with_split", split=["train", "val", "test", "train", "train"] * 40)
    fit = ["data.splits.train=100", "data.splits.val=20", "data.splits.test=20"] if option == "random_counts" else []
    cfg = compose_cfg([f"data/splits={option}", f"data.uri={uri}", f"data.table={table}", *fit])
    dm = instantiate(cfg.data)
    dm.setup()
    sizes = {name: len(rows) for name, rows in dm.splits.items()}
    assert sum(sizes.values()) <= 200 and sizes
    if option == "all":
        assert cfg.data.splits is None and sizes == {"all": 200}
    else:
        assert set(sizes) == {"train", "val", "test"}


def test_split_fraction_override(tiny):
    cfg = compose_cfg(["data.splits.val=0.2", "data.splits.train=0.7", *tiny])
    assert dict(cfg.data.splits) == {"train": 0.7, "val": 0.2, "test": 0.1}
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert {n: len(s) for n, s in dm.splits.items()} == {"train": 140, "val": 40, "test": 20}


@pytest.mark.parametrize("option", options("model"))
def test_model_group(option, tiny):
    cfg = compose_cfg([f"model={option}", *tiny])
    assert isinstance(instantiate(cfg.model), pl.LightningModule)


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_group(option, tiny):
    import torch

    cfg = compose_cfg([f"trainer={option}", *tiny])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        pytest.skip("composes; instantiating needs a GPU")
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert isinstance(trainer, pl.Trainer)
    if option == "ddp_sim":
        assert trainer.world_size == 2 and trainer.num_devices == 2
        assert type(trainer.strategy).__name__ == "DDPStrategy"
        assert trainer.strategy.process_group_backend == "gloo"


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_logger_groups(group, tiny):
    for option in options(group):
        cfg = compose_cfg([f"{group}={option}", *tiny])
        objects = instantiate_group(cfg[group])
        assert len(objects) == (0 if option == "none" else len(cfg[group]))
        kind = pl.Callback if group == "callbacks" else pl.loggers.Logger
        assert all(isinstance(o, kind) for o in objects)


@pytest.mark.parametrize("group,option", [(g, o) for g in ("experiment", "debug") for o in options(g)])
def test_experiment_and_debug_groups(group, option, tiny):
    cfg = compose_cfg([f"{group}={option}", *tiny])
    assert isinstance(instantiate(cfg.data), LanceDataModule)
    assert isinstance(instantiate(cfg.model), MLPClassifier)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=instantiate_group(cfg.callbacks))
    assert isinstance(trainer, pl.Trainer)
    if option == "fdr":
        assert cfg.trainer.fast_dev_run is True
    if option == "digits_ddp":
        assert trainer.world_size == 2 and cfg.data.batch_size == 32


def _error_text(err: BaseException) -> str:
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def test_mistyped_key_is_rejected_at_compose_naming_it():
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["data.batchsize=64"])
    assert "data.batchsize" in _error_text(info.value)


def test_wrong_type_is_rejected_at_compose_naming_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg(["data.batch_size=big"])
    assert "data.batch_size" in _error_text(info.value)


def test_forced_unknown_key_is_rejected_before_training(tiny, tmp_path):
    cfg = compose_cfg(["+data.batchsize=64", *tiny])
    with pytest.raises(ConfigKeyError, match=r"data\.batchsize \(did you mean data\.batch_size\?\)"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # nothing was written: no Trainer ran


@pytest.mark.parametrize(
    "override,key", [("data.shuffle=random", "data.shuffle"), ("trainer.precision=17", "trainer.precision")]
)
def test_value_outside_choices_is_rejected(override, key, tiny):
    with pytest.raises(ConfigKeyError, match=key):
        check_config(compose_cfg([override, *tiny]))


def _params(func: Any, *skip: str) -> set[str]:
    return {n for n in inspect.signature(func).parameters if n not in ("self", *skip)}


def test_schemas_follow_the_signatures():
    assert {f.name for f in dataclasses.fields(DataConfig)} == _params(LanceDataModule.__init__) | {
        "_target_",
        "_convert_",
    }
    assert {f.name for f in dataclasses.fields(TrainerConfig)} == _params(
        pl.Trainer.__init__, "logger", "callbacks"
    ) | {"_target_"}
    types = {f.name: f.type for f in dataclasses.fields(DataConfig)}
    assert types["batch_size"] is int
    assert types["columns"] == (list[str] | None)


@pytest.mark.parametrize(
    "hint,expected,choices",
    [
        (int, int, None),
        (int | None, int | None, None),
        (Sequence[str] | None, list[str] | None, None),
        (Mapping[str, Any] | None, dict[str, Any] | None, None),
        (Literal["a", "b"], str, ("a", "b")),
        (Literal["a"] | None, str | None, ("a", None)),
        (typing.Callable[[int], int] | str | None, Any, None),
    ],
)
def test_omegaconf_type(hint, expected, choices):
    assert omegaconf_type(hint) == (expected, choices)


def test_train_fits_tests_and_logs_the_shard_plan(tiny, tmp_path):
    cfg = compose_cfg(
        [*tiny, "trainer=cpu", "trainer.max_epochs=1", "data.batch_size=32", "trainer.enable_progress_bar=false"]
    )
    metrics = train(cfg)
    assert set(metrics) == {"test/acc", "test/loss"}
    assert 0.0 <= metrics["test/acc"] <= 1.0
    hparams = yaml.safe_load((tmp_path / "run" / "csv" / "hparams.yaml").read_text())
    assert hparams["table_version"] == 1
    assert hparams["split_rows"] == {"train": 160, "val": 20, "test": 20}
    plan = hparams["shard_plan"]
    assert plan["train"]["batches_per_rank"] == [5] and plan["train"]["rows_per_rank"] == [160]
    assert plan["test"]["rows"] == 20 and plan["test"]["world_size"] == 1
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_train_builds_the_demo_table_when_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = compose_cfg(["debug=fdr", f"paths.output_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    assert (tmp_path / "data" / "demo" / "digits.lance").is_dir()
    assert "test/acc" in metrics


def test_demo_command_builds_the_table(tmp_path, capsys):
    import lancedb

    from lance_lightning.app.demo import main

    main(["--uri", str(tmp_path / "db")])
    table = lancedb.connect(str(tmp_path / "db")).open_table("digits")
    assert table.count_rows() == 1797
    assert str(table.schema.field("label").type) == "int64"
    assert "fixed_shape_tensor" in str(table.schema.field("image").type)
    assert "1797 rows" in capsys.readouterr().out
    main(["--uri", str(tmp_path / "db")])  # an existing table is kept
    assert lancedb.connect(str(tmp_path / "db")).open_table("digits").version == table.version
