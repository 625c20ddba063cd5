"""The package's ``data`` group (and its schema) composed into another Hydra project.

A minimal project of its own in ``tmp_path``: its ``config.yaml`` pulls ``data: lance`` through
``hydra.searchpath: [pkg://lance_lightning.app.conf]``, its ``train.py`` instantiates ``cfg.data``
and fits a model that unpacks ``x, y = batch`` under a Trainer, in a subprocess, as a user runs it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CONFIG = """\
defaults:
  - data: lance          # the package's data group (lance_lightning/app/conf/data/lance.yaml)
  - _self_

seed: null               # the usual template default: the data seed then is 0, or seed_everything's

data:
  uri: {uri}
  table: toy
  columns: [x, y]
  batch_size: 8
  num_workers: 0
  batch_keys: [x, y]     # x, y = batch
  seed: ${{seed}}

hydra:
  searchpath:
    - pkg://lance_lightning.app.conf
  run:
    dir: outputs
"""

TRAIN = """\
import hydra
import lightning.pytorch as pl
import torch
from hydra.utils import instantiate


class Unpacking(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 3)
        self.rows = 0

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.rows += x.size(0)
        return torch.nn.functional.cross_entropy(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = Unpacking()
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, datamodule=datamodule)
    print(f"rows={model.rows} seed={datamodule.options.seed} splits={datamodule.hparams['split_rows']}")


if __name__ == "__main__":
    main()
"""


@pytest.fixture
def project(make_table, tmp_path):
    uri, _ = make_table("toy", 50)
    root = tmp_path / "my_project"
    root.mkdir()
    (root / "config.yaml").write_text(CONFIG.format(uri=uri))
    (root / "train.py").write_text(TRAIN)
    return root


def run(project, *overrides: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=project, env=env, capture_output=True, text=True, timeout=240
    )


def test_a_project_of_its_own_trains_from_the_packaged_data_group(project):
    result = run(project)
    assert result.returncode == 0, result.stderr[-3000:]
    # the package's default splits (data/splits/random.yaml): 40 / 5 / 5 of 50 rows, all 40 trained on
    assert "rows=40 seed=0 splits={'train': 40, 'val': 5, 'test': 5}" in result.stdout, result.stdout[-2000:]


@pytest.mark.long
def test_the_packaged_split_options_and_the_global_seed(project):
    seeded = run(project, "seed=3", "data/splits=hash")
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    assert "seed=3" in seeded.stdout


def test_the_packaged_schema_refuses_a_typo(project):
    result = run(project, "data.batchsize=16")
    assert result.returncode == 1
    assert "batchsize" in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_the_conf_ships_in_the_package():
    """Where the wheel puts it (package-data ``app/conf``): the package ``lance_lightning.app.conf``."""
    from importlib import resources

    conf = resources.files("lance_lightning.app.conf")
    assert conf.joinpath("data", "lance.yaml").is_file() and conf.joinpath("data", "splits", "hash.yaml").is_file()
