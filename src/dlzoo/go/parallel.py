"""Go's work on every core: `fork_map(fn, calls, workers)` runs `fn(*args)` for each call in forked processes.

The Go runners and evaluators run torch on one thread per process (a 5x5 network's batches are too small for
intra-op threads to pay), so a second core is used only by a second process. Self-play games and match pairings
are independent, so they split across processes with no communication but the results.

Why fork and a module-level table rather than `concurrent.futures` with pickled arguments: the callables close
over networks, OpenSpiel games and bots (not all picklable); a forked child inherits them as they are. Each child
runs one call and exits (`maxtasksperchild=1`), so every call starts from the parent's state (its generators
untouched) whichever process runs it and whatever ran before: the results do not depend on the scheduling.
Results travel back pickled (games, arrays, counters). Not for a network on a GPU: a forked child cannot use
the parent's CUDA context, so callers pass workers=1 there, and the calls then run in this process, in order.
"""

from __future__ import annotations

import multiprocessing
from typing import Callable

import torch

_CALLS: tuple = ()   # (fn, calls) while a fork_map runs: what the forked children read


def _run(k: int, forked: bool = True):
    if forked:
        # One torch thread in the child before any torch call: a child forked from a process whose OpenMP pool
        # had several threads hangs in its first parallel region (GNU OpenMP keeps no pool across fork).
        torch.set_num_threads(1)
    fn, calls = _CALLS
    return fn(*calls[k])


def split_sizes(total: int, parts: int, multiple: int = 1) -> list[int]:
    """`total` games in at most `parts` near-equal parts, each a multiple of `multiple` (2: each part alternates
    the colours evenly), and a remainder below `multiple` as one more part: sizes depend on `parts` alone."""
    units, rest = divmod(total, multiple)
    parts = max(1, min(parts, units))
    sizes = [multiple * (units // parts + (k < units % parts)) for k in range(parts)] if units else []
    return sizes + ([rest] if rest else [])


def fork_map(fn: Callable, calls: list[tuple], workers: int) -> list:
    """[fn(*args) for args in calls], in up to `workers` processes at a time (in this process when workers <= 1).
    The processes take the calls in order: list the longest first."""
    global _CALLS
    _CALLS = (fn, list(calls))
    try:
        if workers > 1 and len(calls) > 1:
            with multiprocessing.get_context("fork").Pool(min(workers, len(calls)), maxtasksperchild=1) as pool:
                return pool.map(_run, range(len(calls)), chunksize=1)
        return [_run(k, forked=False) for k in range(len(calls))]
    finally:
        _CALLS = ()
