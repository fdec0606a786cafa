"""Pausing Python's cyclic garbage collector while a big, acyclic structure is built.

Loading and planning make hundreds of thousands of objects that form trees, not cycles. As
they pile up, the collector walks every object of the process again and again (each full
collection of a 40,000-task config costs about 0.4 s, and there are several): that, not the
work itself, was most of loading's time, and made planning grow faster than its size. Paused,
the collector runs as usual afterwards and frees whatever cycles were left.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pausers = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Run the block with the cyclic collector off; nested and concurrent uses are fine: it
    comes back on when the last block ends, if it was on before the first began."""
    global _pausers, _was_enabled
    with _lock:
        if _pausers == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pausers += 1
    try:
        yield
    finally:
        with _lock:
            _pausers -= 1
            if _pausers == 0 and _was_enabled:
                gc.enable()
