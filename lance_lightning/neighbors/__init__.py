"""Neighbours in the batch (issue 32): each train row's ``k`` nearest rows of its split.

* :mod:`.spec`: the ``neighbors`` setting (:class:`NeighborSpec`), validated once;
* :mod:`.exact`: :func:`exact_neighbors`, the exact search in blocks of matrix products;
* :mod:`.mine`: one batched mining pass (exact, or lancedb's vector index), stored once per node
  beside the split's stage, keyed like a stage;
* :mod:`.reader`: :class:`~.reader.NeighborBatchDataset`, the wrapper that gathers the neighbours'
  columns into ``batch["neighbors"]``;
* :mod:`.build`: the train stage's reader with neighbours (what the datamodule calls).

This package's top level imports NumPy only (the settings import it); the reader and the mining
are imported from their modules.
"""

from .exact import METRICS, Neighbors, exact_neighbors
from .spec import NEIGHBOR_MODES, NeighborSpec

__all__ = ["METRICS", "NEIGHBOR_MODES", "NeighborSpec", "Neighbors", "exact_neighbors"]
