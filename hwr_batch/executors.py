"""Where batch tasks run: a small executor interface and the local process pool.

The batch runner (:mod:`hwr_batch.batch`) never talks to ``concurrent.futures`` or Dask
directly. It hands an :class:`Executor` module-level functions with one small picklable
argument each (a file path, a page number, the options) and gets back :class:`Outcome` records as
tasks finish. The executor is a transport: it does not retry, log or write files. A worker that
dies is reported as :class:`WorkerCrashed` for each task it may have been running, and the batch
decides what to do (it re-runs the suspects one at a time to find the culprit).

A Dask executor fits the same interface: ``submit`` -> ``client.submit(fn, arg, pure=False)``,
``wait`` -> ``distributed.wait(futures, timeout, return_when="FIRST_COMPLETED")``, a
``KilledWorker`` -> :class:`WorkerCrashed`; workers prepare themselves lazily on their first task
(:func:`hwr_batch.batch.prepare_worker` is idempotent), so no pool initialiser is needed there.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Hashable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol

from hwr_batch.errors import BadArguments


class WorkerCrashed(Exception):
    """The worker process running a task died (killed, out of memory, segfault)."""


@dataclass(frozen=True)
class Outcome:
    """A finished task: the caller's ``key``, and either its ``value`` or the ``error`` raised."""

    key: Hashable
    value: Any = None
    error: BaseException | None = None


class Executor(Protocol):
    """What the batch runner needs from a place to run tasks."""

    #: How many tasks can run at once (used to size the number of tasks kept in flight).
    workers: int

    def submit(self, fn: Callable[[Any], Any], arg: Any, key: Hashable) -> None:
        """Queue ``fn(arg)``; ``fn`` must be a module-level function and ``arg`` picklable.

        ``key`` is echoed back in the task's :class:`Outcome`; keys must be unique in flight.
        """
        ...

    def in_flight(self) -> int:
        """Tasks submitted whose outcome has not been returned by :meth:`wait` yet."""
        ...

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        """Block until at least one task finishes (or ``timeout`` seconds pass; then ``[]``).

        Returns every task finished so far, each exactly once.
        """
        ...

    def close(self, cancel: bool = False) -> None:
        """Release the workers; with ``cancel`` drop queued tasks, else let them finish."""
        ...


def available_cores() -> int:
    """Cores this process may run on (CPU affinity, e.g. a container's cpuset), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _init_local_worker(init: Callable[[Any], None] | None, init_arg: Any) -> None:
    # Ctrl-C goes to the whole process group; the parent alone decides how to stop, so a page
    # that is being written is finished rather than cut off.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if init is not None:
        init(init_arg)


class LocalPoolExecutor:
    """``workers`` local processes (``concurrent.futures.ProcessPoolExecutor``).

    Workers are started with the ``spawn`` method: the parent may hold an onnxruntime session and
    OpenCV thread pools, which do not survive ``fork``. ``initializer(init_arg)`` runs once per
    worker (thread limits, model loading). When a worker dies the pool is broken; every task that
    was pending in it is reported as :class:`WorkerCrashed` and a fresh pool is started for the
    tasks submitted afterwards.
    """

    def __init__(
        self,
        workers: int | None = None,
        initializer: Callable[[Any], None] | None = None,
        init_arg: Any = None,
    ) -> None:
        self.workers = workers if workers else available_cores()
        if self.workers < 1:
            raise BadArguments(f"--jobs must be at least 1, got {self.workers}")
        self._initializer = initializer
        self._init_arg = init_arg
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Future[Any], Hashable] = {}
        #: Number of times the pool broke and was replaced (for reporting).
        self.restarts = 0

    def _ensure_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_local_worker,
                initargs=(self._initializer, self._init_arg),
            )
        return self._pool

    def _discard_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self.restarts += 1

    def submit(self, fn: Callable[[Any], Any], arg: Any, key: Hashable) -> None:
        try:
            fut = self._ensure_pool().submit(fn, arg)
        except BrokenProcessPool:
            # The pool broke since the last wait(); its pending futures carry the error and will
            # be reported by wait(). This task goes to a fresh pool.
            self._pool = None
            self.restarts += 1
            fut = self._ensure_pool().submit(fn, arg)
        self._futures[fut] = key

    def in_flight(self) -> int:
        return len(self._futures)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._futures:
            return []
        done, _ = futures_wait(list(self._futures), timeout=timeout, return_when=FIRST_COMPLETED)
        outcomes = [self._collect(fut) for fut in done]
        if any(isinstance(o.error, WorkerCrashed) for o in outcomes):
            # A broken pool fails all its other futures too (the pool's manager thread sets
            # them promptly); collect them now so the caller sees the whole set of suspects at
            # once, then start a fresh pool on the next submit.
            rest = list(self._futures)
            futures_wait(rest)
            outcomes += [self._collect(fut) for fut in rest]
            self._discard_pool()
        return outcomes

    def _collect(self, fut: Future[Any]) -> Outcome:
        key = self._futures.pop(fut)
        exc = fut.exception()
        if exc is None:
            return Outcome(key, value=fut.result())
        if isinstance(exc, BrokenProcessPool):
            return Outcome(key, error=WorkerCrashed(str(exc) or "worker process died"))
        return Outcome(key, error=exc)

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None
        self._futures.clear()

    def __enter__(self) -> LocalPoolExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=True)


def create_executor(
    scheduler: str | None,
    jobs: int | None,
    initializer: Callable[[Any], None] | None = None,
    init_arg: Any = None,
) -> Executor:
    """The executor for ``--scheduler`` (``None``: the local process pool with ``jobs`` workers).

    This is the one place other back ends (Dask: ``tcp://HOST:PORT``, ``local[:N]``) plug in.
    """
    if scheduler is None or scheduler == "processes":
        return LocalPoolExecutor(jobs, initializer, init_arg)
    if scheduler.startswith("local") or "://" in scheduler:
        # Imported only here: Dask is an optional extra, and this import says how to get it.
        from hwr_batch.dask_executor import DaskExecutor

        return DaskExecutor(scheduler, initializer, init_arg, jobs=jobs)
    raise BadArguments(f"unknown --scheduler {scheduler!r}")
