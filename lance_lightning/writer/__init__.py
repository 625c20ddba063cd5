"""``LancePredictionWriter``: ``predict_step`` outputs become new columns, or a new table.

One owner a step (see :mod:`.callback` for the whole flow):

* :mod:`.callback`: the Lightning callback (rows of each batch, the run's start, its one commit);
* :mod:`.stage`: outputs as Arrow, one staging file a rank, and the errors;
* :mod:`.lock`: the lock every rank holds on its run's staging files (two runs never share a target);
* :mod:`.feed`: the bounded hand-over from the predict loop to a writer thread;
* :mod:`.fragments`: new columns as one data file a fragment, one ``Merge`` commit (pylance);
* :mod:`.table`: a new table written during the loop, one ``Overwrite`` commit (pylance);
* :mod:`.rewrite`: the lancedb-only commits (the table rewritten, or a new keyed table).
"""

from .callback import LancePredictionWriter
from .lock import StagingBusyError
from .stage import KEY_ROWID, STAGING_DIRNAME, PredictionWriteError, TableMovedError, prediction_arrays

__all__ = [
    "KEY_ROWID",
    "STAGING_DIRNAME",
    "LancePredictionWriter",
    "PredictionWriteError",
    "StagingBusyError",
    "TableMovedError",
    "prediction_arrays",
]
