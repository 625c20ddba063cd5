"""Neighbours from a split's vectors (issue 32): the mining pass, apart from the reader.

:func:`exact_neighbors` is the exact search in blocks of matrix products. The lists it makes are
meant to be staged beside the split's stage and gathered like any staged column; that wiring into
the datamodule is not built yet.
"""

from .exact import METRICS, Neighbors, exact_neighbors

__all__ = ["METRICS", "Neighbors", "exact_neighbors"]
