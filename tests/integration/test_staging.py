"""In-memory mode: same batches as reading the table, shared by workers, budget enforced."""

from __future__ import annotations

import pytest
import torch

from lance_lightning import LanceDataModule
from lance_lightning.memory import MemoryBudgetError


def epoch(dm: LanceDataModule, number: int, stage: str = "train") -> list[list[int]]:
    dm.samplers[stage].set_epoch(number)
    return [b["id"].tolist() for b in getattr(dm, f"{stage}_dataloader")()]


def test_in_memory_gives_the_same_batches_as_the_table(make_table):
    uri, table = make_table("toy", 301)
    kwargs = dict(columns=["id", "x", "y"], batch_size=16, seed=9)
    disk = LanceDataModule(uri, "toy", **kwargs)
    memory = LanceDataModule(uri, "toy", in_memory=True, **kwargs)
    disk.setup("fit")
    memory.setup("fit")
    for n in (0, 1):
        assert epoch(memory, n) == epoch(disk, n)
    assert epoch(memory, 0, "val") == epoch(disk, 0, "val")
    source = table.to_arrow()
    batch = next(iter(memory.train_dataloader()))
    for pos, i in enumerate(batch["id"].tolist()):
        assert batch["x"][pos].tolist() == source["x"][i].as_py()
        assert batch["y"][pos].item() == source["y"][i].as_py()


def workers_see_shared_memory(batch):
    """A transform (runs in the worker): does the dataset there map shared memory?"""
    dataset = torch.utils.data.get_worker_info().dataset
    batch["shared"] = torch.tensor([t.is_shared() for t in dataset.columns.values()])
    return batch


def test_workers_share_one_copy_and_lose_no_row(make_table):
    uri, _ = make_table("toy", 203)
    dm = LanceDataModule(
        uri, "toy", columns=["id", "x"], splits={"train": 1.0}, batch_size=16, num_workers=2, in_memory=True,
        transform="tests.integration.test_in_memory.workers_see_shared_memory",
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())
    assert sorted(i for b in batches for i in b["id"].tolist()) == list(range(203))
    assert all(b["shared"].all() for b in batches)


def test_over_budget_or_non_tensor_columns_are_refused(make_table):
    uri, _ = make_table("toy", 1000)
    too_small = LanceDataModule(uri, "toy", columns=["id", "x"], in_memory=True, memory_budget_bytes=1000)
    with pytest.raises(MemoryBudgetError, match=r"split 'train' needs about .* memory_budget_bytes=1,000"):
        too_small.setup("fit")
    strings = LanceDataModule(uri, "toy", columns=["id", "name"], in_memory=True)
    with pytest.raises(MemoryBudgetError, match=r"column\(s\) \['name'\] convert to Python lists"):
        strings.setup("fit")
