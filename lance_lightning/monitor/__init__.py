"""``LoaderMonitor``: does the training loop wait for data? (see :mod:`.callback` for what is measured).

* :mod:`.callback`: the Lightning callback, its windows and its logging;
* :mod:`.clock`: the per-stage clocks wrapped around the loops' fetches;
* :mod:`.advice`: what the monitor says in words (pure text from settings and timings).

The per-dataset timings (:class:`lance_lightning.timing.LoaderTiming`) live below both the readers
and the monitor, so this package imports no reader.
"""

from .advice import advice, read_path
from .callback import LoaderBottleneckWarning, LoaderMonitor, batch_rows

__all__ = ["LoaderBottleneckWarning", "LoaderMonitor", "advice", "batch_rows", "read_path"]
