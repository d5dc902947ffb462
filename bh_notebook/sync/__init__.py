"""The shared catalog as an append-only log of small immutable commits, with checkpoints.

``changes.py`` computes and applies row changes and encodes commit objects; ``log.py`` names the log's keys and
makes its requests; ``replica.py`` is one process's replica (start from a checkpoint, commit, take in others'
commits), thread-free. ``BucketSQLite`` decides when.
"""

from .changes import Change, CorruptCommit
from .log import CommitLog
from .replica import Arrival, Committed, PruneReport, Replica, read_head

__all__ = ["Arrival", "Change", "CommitLog", "Committed", "CorruptCommit", "PruneReport", "Replica", "read_head"]
