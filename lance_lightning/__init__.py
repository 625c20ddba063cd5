"""Train PyTorch Lightning models straight from a LanceDB table.

The public API: :class:`LanceDataModule` (splits, DDP shards, exact shuffle and resume),
:class:`LancePredictionWriter` (``trainer.predict`` outputs back into the table),
:class:`LoaderMonitor` (is the loader the bottleneck?), :class:`RowValueWriter` (a per-row value of
training, e.g. the loss, written back each epoch: a curriculum), and for use without a datamodule
:class:`LanceBatchDataset` with :class:`LanceBatchSampler` / :class:`SequentialLanceBatchSampler`.
Everything else lives in its module (``lance_lightning.sharding``, ``.splits``, ``.orders``...).
"""

import importlib

_WHERE = {
    # the errors a user may catch: each names the table, column, split, stage or setting at fault
    "BatchKeyCollisionError": "convert",
    "BatchKeysError": "batch_keys",
    "MissingTableError": "source",
    "PredictionWriteError": "writer",
    "ResumeRefusedError": "state",
    "RowValueError": "curriculum",
    "StageDiskError": "stage",
    "StageError": "stage",
    "StagingBusyError": "writer",
    "TableMovedError": "writer",
    "DataOptions": "options",
    "LanceBatchDataset": "dataset",
    "LanceBatchSampler": "sampler",
    "LanceDataModule": "datamodule",
    "LancePredictionWriter": "writer",
    "LanceSourceError": "source",
    "LoaderMonitor": "monitor",
    "RowValueWriter": "curriculum",
    "SequentialLanceBatchSampler": "sampler",
    "SettingError": "options",
    "SplitSpecError": "splits",
    "TableChangedError": "source",
    "TableSource": "source",
    "UnsupportedColumnError": "convert",
}
__all__ = sorted(_WHERE)
__version__ = "0.1.0"


def __getattr__(name: str):
    # Each name is imported on first use: a DataLoader worker unpickles its reader through this
    # package and must import neither Lightning nor (reading a stage) lancedb.
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'lance_lightning' has no attribute {name!r}")
