"""Train PyTorch Lightning models straight from a LanceDB table."""

from .convert import UnsupportedColumnError, batch_to_tensors, describe_column
from .dataset import LanceBatchDataset
from .sampler import LanceBatchSampler, SequentialLanceBatchSampler
from .sharding import epoch_order, plan_epoch, rank_batch_bounds
from .source import LanceSourceError, TableSource
from .splits import SplitSpecError, build_splits, parse_split_spec

__all__ = [
    "LanceBatchDataset",
    "LanceBatchSampler",
    "LanceDataModule",
    "LanceSourceError",
    "SequentialLanceBatchSampler",
    "SplitSpecError",
    "TableSource",
    "UnsupportedColumnError",
    "batch_to_tensors",
    "build_splits",
    "describe_column",
    "epoch_order",
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
    raise AttributeError(f"module 'lance_lightning' has no attribute {name!r}")
