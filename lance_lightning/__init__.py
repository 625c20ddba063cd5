"""Train PyTorch Lightning models straight from a LanceDB table."""

from .convert import UnsupportedColumnError, batch_to_tensors, describe_column
from .dataset import BatchGroup, LanceBatchDataset
from .rowset import RowSet
from .sampler import LanceBatchSampler, SequentialLanceBatchSampler
from .sharding import epoch_order, order_for, plan_epoch, rank_batch_bounds
from .source import LanceSourceError, TableSource
from .splits import SplitSpecError, build_splits, parse_split_spec

__all__ = [
    "BatchGroup",
    "LanceBatchDataset",
    "LanceBatchSampler",
    "LanceDataModule",
    "LancePredictionWriter",
    "LanceSourceError",
    "LoaderMonitor",
    "RowSet",
    "SequentialLanceBatchSampler",
    "SplitSpecError",
    "TableSource",
    "UnsupportedColumnError",
    "batch_to_tensors",
    "build_splits",
    "describe_column",
    "epoch_order",
    "order_for",
    "parse_split_spec",
    "plan_epoch",
    "rank_batch_bounds",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Imported on first use: DataLoader workers unpickle the dataset through this package
    # and must not pay for importing Lightning.
    if name == "LanceDataModule":
        from .datamodule import LanceDataModule

        return LanceDataModule
    if name == "LancePredictionWriter":
        from .writer import LancePredictionWriter

        return LancePredictionWriter
    if name == "LoaderMonitor":
        from .monitor import LoaderMonitor

        return LoaderMonitor
    raise AttributeError(f"module 'lance_lightning' has no attribute {name!r}")
