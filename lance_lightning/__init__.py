"""Train PyTorch Lightning models straight from a LanceDB table.

The public API: :class:`LanceDataModule` (splits, DDP shards, exact shuffle and resume),
:class:`LancePredictionWriter` (``trainer.predict`` outputs back into the table),
:class:`LoaderMonitor` (is the loader the bottleneck?), and for use without a datamodule
:class:`LanceBatchDataset` with :class:`LanceBatchSampler` / :class:`SequentialLanceBatchSampler`.
Everything else lives in its module (``lance_lightning.sharding``, ``.splits``, ``.orders``...).
"""

from .convert import UnsupportedColumnError
from .dataset import LanceBatchDataset, TableChangedError
from .options import DataOptions, SettingError
from .sampler import LanceBatchSampler, SequentialLanceBatchSampler
from .source import LanceSourceError, TableSource
from .splits import SplitSpecError

__all__ = [
    "DataOptions",
    "LanceBatchDataset",
    "LanceBatchSampler",
    "LanceDataModule",
    "LancePredictionWriter",
    "LanceSourceError",
    "LoaderMonitor",
    "SequentialLanceBatchSampler",
    "SettingError",
    "SplitSpecError",
    "TableChangedError",
    "TableSource",
    "UnsupportedColumnError",
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
