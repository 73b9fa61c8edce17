"""The engine's budget: how many queries run at once and how many HTTP callers may wait, shared by every way in."""

from __future__ import annotations

import threading

# Measured on 2 CPU cores (benchmarks/app_latency.py): 20 queries at once finish as soon with
# 1 as with 2 or 4 running together, and each waits least with 1; TensorFlow already spreads one
# forward pass over the cores.
CONCURRENCY_LIMIT = 1


class Gate:
    """The engine's budget shared by the Gradio queue and the plain HTTP endpoint.

    At most `concurrency` queries run at once, whichever way they came in; HTTP callers beyond
    `max_waiting` get "busy" at once instead of piling up behind the UI's queue.
    """

    def __init__(self, concurrency: int, max_waiting: int):
        self._running = threading.BoundedSemaphore(max(1, concurrency))
        self._lock = threading.Lock()
        self._waiting = 0
        self.max_waiting = max_waiting

    def __enter__(self):
        self._running.acquire()
        return self

    def __exit__(self, *exc):
        self._running.release()

    def try_wait(self) -> bool:
        """Counts one more HTTP caller waiting; False when `max_waiting` already wait."""
        with self._lock:
            if self._waiting >= self.max_waiting:
                return False
            self._waiting += 1
            return True

    def done_waiting(self) -> None:
        with self._lock:
            self._waiting -= 1
