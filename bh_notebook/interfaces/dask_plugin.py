"""The ``distributed`` worker plugin that carries a store's bucket configuration to the workers.

Imported only when a ``distributed`` client is in use (it imports distributed). The plugin is pickled to every
worker, present and future; ``frames_dask`` finds it there by name (``bh-notebook-<token>``) when a task first
needs the bucket, so the tasks themselves carry only the token.
"""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin


class BucketPlugin(WorkerPlugin):
    """Holds a bucket spec (shown nowhere: its repr names only the token)."""

    def __init__(self, token: str, spec: Any) -> None:
        self.token = token
        self.spec = spec

    def setup(self, worker: Any) -> None:
        """Nothing to do: tasks look the plugin up by name."""

    def __repr__(self) -> str:
        return f"<BucketPlugin {self.token[:8]}>"


__all__ = ["BucketPlugin"]
