"""Batch tasks on a Dask distributed cluster, behind the same interface as the local pool.

``hwr-batch INPUT -o OUT --scheduler tcp://HOST:8786`` runs on an existing cluster;
``--scheduler local[:N]`` starts a LocalCluster of N single-threaded worker processes here.
The batch runner (:mod:`hwr_batch.batch`) is the same in every case: it lists the inputs,
decides what to resume, and hands this executor small task records (a path and a page number,
never pixels). Workers load the page from its path themselves, write its files to OUTDIR
(shared storage or an fsspec URL) and send back a few numbers.

Each worker gets a :class:`PrepareWorker` plugin: when it starts (and when a restarted worker
rejoins) it limits onnxruntime and OpenCV to one thread and loads the model, which stays in the
process (``classify.load_classifier`` caches it) for every later task.

Faults. A worker that dies mid-task (killed, out of memory, its machine gone) has the task
rescheduled on another worker by the scheduler; only after ``allowed-failures`` + 1 deaths does
the scheduler give up and fail the task with ``KilledWorker``. This executor reports that as
:class:`~hwr_batch.executors.WorkerCrashed`, and the batch re-runs it alone to tell a poisonous
input from an innocent bystander; the culprit ends as one errors.csv row and the batch goes on.
On a LocalCluster the scheduler is ours, so its ``allowed-failures`` and ``worker-saturation``
are set here (see :mod:`hwr_batch.defaults`); on an existing cluster they are the scheduler's
own configuration (docs/scale-out.md says which settings to use).

Dask is optional: nothing imports this module unless ``--scheduler`` is given
(:func:`hwr_batch.executors.create_executor` imports it then), and importing it without Dask
installed raises BadArguments with the one line that says how to install it.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

from hwr_batch import defaults
from hwr_batch.errors import BadArguments
from hwr_batch.executors import Outcome, WorkerCrashed, available_cores

_INSTALL_HINT = "--scheduler needs Dask; install the extra: pip install 'hwr-batch[dask]'"

try:
    import dask
    import distributed
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError as _exc:
    raise BadArguments(_INSTALL_HINT) from _exc

#: ``local`` or ``local:N``.
_LOCAL_RE = re.compile(r"^local(?::(?P<n>\d+))?$")
#: Addresses a distributed.Client accepts: tcp://, tls://, ws://, wss://, ucx://, inproc://.
_ADDRESS_RE = re.compile(r"^(tcp|tls|ws|wss|ucx|inproc)://\S+$")
#: Seconds between looks at the worker list (for the restart count); each look is a round trip
#: to the scheduler carrying every worker's details, too much to do after every task.
_WORKER_CHECK_S = 5.0


def parse_scheduler(spec: str, jobs: int | None = None) -> tuple[str, int | None, str | None]:
    """Parse ``--scheduler``.

    ``("local", N, None)`` for ``local[:N]`` (N defaults to ``jobs``, else the cores this process
    may use); ``("address", None, ADDRESS)`` for a scheduler address. Raises BadArguments
    otherwise.
    """
    m = _LOCAL_RE.match(spec)
    if m:
        n = int(m.group("n")) if m.group("n") else (jobs or available_cores())
        if n < 1:
            raise BadArguments(f"--scheduler {spec}: need at least one worker")
        return "local", n, None
    if _ADDRESS_RE.match(spec):
        return "address", None, spec
    raise BadArguments(
        f"--scheduler {spec!r}: expected local, local:N or a scheduler address tcp://HOST:PORT"
    )


def _verbose() -> bool:
    # The CLI's -v sets its logger to DEBUG; the executor has no other way to know.
    return logging.getLogger("hwr-batch").isEnabledFor(logging.DEBUG)


def _hwr_version() -> str:
    """Task: the hwr-batch version where it runs (scheduler and worker environment check)."""
    from hwr_batch import __version__

    return __version__


class PrepareWorker(WorkerPlugin):
    """Worker plugin: run ``initializer(init_arg)`` once in every worker process.

    The scheduler hands it to every worker, including those that join later (a restarted
    worker, a scaled-up cluster), so each one limits its threads and loads the model before its
    first task and keeps it for all the others.

    ``ignore_sigint``: for the workers of our own LocalCluster only. They share this terminal's
    process group, so Ctrl-C reaches them too; as in the local pool, the parent alone decides
    how to stop (it cancels what is queued and closes the cluster). Workers of a cluster someone
    else started keep their Ctrl-C.
    """

    name = "hwr-batch-prepare-worker"

    def __init__(
        self,
        initializer: Callable[[Any], None] | None,
        init_arg: Any,
        ignore_sigint: bool = False,
    ) -> None:
        self.initializer = initializer
        self.init_arg = init_arg
        self.ignore_sigint = ignore_sigint

    def setup(self, worker: Any) -> None:
        if self.ignore_sigint and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if self.initializer is not None:
            self.initializer(self.init_arg)


class DaskExecutor:
    """The :class:`~hwr_batch.executors.Executor` interface on a Dask distributed cluster.

    ``scheduler``: ``local``, ``local:N`` or a scheduler address. ``initializer(init_arg)`` runs
    once per worker process (thread limits, model loading). ``workers`` is the number of worker
    threads when the executor starts (the batch keeps a few tasks per thread in flight).
    """

    def __init__(
        self,
        scheduler: str,
        initializer: Callable[[Any], None] | None = None,
        init_arg: Any = None,
        *,
        jobs: int | None = None,
        allowed_failures: int = defaults.DASK_ALLOWED_FAILURES,
        retries: int = defaults.DASK_TASK_RETRIES,
        wait_for_workers_s: float = defaults.DASK_WAIT_FOR_WORKERS_S,
    ) -> None:
        kind, n_local, address = parse_scheduler(scheduler, jobs)
        self.scheduler = scheduler
        self._retries = retries
        self._cluster: Any = None
        self._futures: dict[Any, Hashable] = {}
        self._closed = False
        #: Worker processes that left the cluster while this executor ran (deaths, restarts).
        self.restarts = 0
        self._known_workers: set[str] = set()
        self._threads = 1
        self._last_check = 0.0

        if kind == "local":
            # The LocalCluster's scheduler runs in this process and reads its configuration
            # when it is created; its nannies hand the same configuration to the workers they
            # start. One task per single-threaded worker at a time (saturation 1.0) so that a
            # worker that dies takes the blame only for the page it was reading. No statistical
            # profiler in the workers: it samples every thread's stack every 10 ms, holding the
            # GIL that the page reader needs, for profiles nobody looks at in a batch.
            with dask.config.set(
                {
                    "distributed.scheduler.allowed-failures": allowed_failures,
                    "distributed.scheduler.worker-saturation": 1.0,
                    "distributed.worker.profile.enabled": False,
                }
            ):
                self._cluster = distributed.LocalCluster(
                    n_workers=n_local,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    # Restarts and cancellations are routine here and the batch reports what
                    # matters (a page that failed); Dask's own warnings only with -v.
                    silence_logs=logging.DEBUG if _verbose() else logging.ERROR,
                )
            self._client = distributed.Client(self._cluster)
        else:
            try:
                self._client = distributed.Client(address, timeout=wait_for_workers_s)
            except (OSError, TimeoutError) as exc:
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise BadArguments(
                    f"--scheduler {address}: cannot reach the Dask scheduler ({reason})"
                ) from exc
        try:
            try:
                self._client.wait_for_workers(1, timeout=wait_for_workers_s)
            except TimeoutError as exc:
                raise BadArguments(
                    f"--scheduler {scheduler}: no worker joined within {wait_for_workers_s:g} s"
                ) from exc
            if kind == "address":
                self._check_environment()
            if initializer is not None or kind == "local":
                plugin = PrepareWorker(initializer, init_arg, ignore_sigint=kind == "local")
                self._client.register_plugin(plugin)
            self._refresh_workers(force=True)
        except BaseException:
            self.close(cancel=True)
            raise

    def _check_environment(self) -> None:
        """Refuse, in one line, a cluster that cannot run our tasks.

        The scheduler unpickles every task it is sent and workers run them, so both need
        hwr-batch importable; and a worker with another version would read pages differently
        from the next one. Without this check each page would fail on its own, as an
        errors.csv row with Dask's deserialisation message.
        """
        from hwr_batch import __version__

        probe = self._client.submit(_hwr_version, pure=False)
        try:
            probe.result(timeout=defaults.DASK_WAIT_FOR_WORKERS_S)
        except Exception as exc:
            raise BadArguments(
                f"--scheduler {self.scheduler}: the Dask scheduler or its workers cannot run "
                "hwr-batch tasks; install the same hwr-batch on the scheduler and every worker "
                f"({(str(exc).splitlines() or [type(exc).__name__])[0]})"
            ) from exc
        versions = self._client.run(_hwr_version)
        other = sorted({f"{v}" for v in versions.values()} - {__version__})
        if other:
            raise BadArguments(
                f"--scheduler {self.scheduler}: workers run hwr-batch {', '.join(other)}, "
                f"this client {__version__}; install one version everywhere"
            )

    @property
    def workers(self) -> int:
        """Worker threads in the cluster, as of the last look (every few seconds): the batch
        keeps a few tasks per thread in flight, so a cluster that grows gets more work."""
        return max(1, self._threads)

    @workers.setter
    def workers(self, value: int) -> None:
        self._threads = value

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` (tests use it to reach the workers)."""
        return self._client

    def submit(self, fn: Callable[[Any], Any], arg: Any, key: Hashable) -> None:
        # pure=False: two submissions of one page (a --force rerun in the same session) are
        # two tasks, never a cached result.
        fut = self._client.submit(fn, arg, pure=False, retries=self._retries)
        self._futures[fut] = key

    def in_flight(self) -> int:
        return len(self._futures)

    def wait(self, timeout: float | None = None) -> list[Outcome]:
        if not self._futures:
            return []
        try:
            distributed.wait(list(self._futures), timeout=timeout, return_when="FIRST_COMPLETED")
        except TimeoutError:
            self._refresh_workers()
            return []
        done = [f for f in self._futures if f.done()]
        outcomes = [self._collect(f) for f in done]
        self._refresh_workers()
        return outcomes

    def _collect(self, fut: Any) -> Outcome:
        key = self._futures.pop(fut)
        try:
            value = fut.result()
        except distributed.KilledWorker as exc:
            return Outcome(key, error=WorkerCrashed(str(exc).splitlines()[0]))
        except Exception as exc:  # the task's own exception (or a cancelled future)
            return Outcome(key, error=exc)
        finally:
            # Drop the result from the cluster's memory now that we hold it.
            fut.release()
        return Outcome(key, value=value)

    def _refresh_workers(self, force: bool = False) -> None:
        now_s = time.monotonic()
        if not force and now_s - self._last_check < _WORKER_CHECK_S:
            return
        self._last_check = now_s
        try:
            info = self._client.scheduler_info()["workers"]
        except Exception:  # best effort: keep the last known figures
            return
        now = set(info)
        # A restarted worker comes back under a new address, so it shows as one gone, one new.
        self.restarts += len(self._known_workers - now)
        self._known_workers = now
        self._threads = int(sum(w.get("nthreads", 1) for w in info.values()))

    def close(self, cancel: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        client = getattr(self, "_client", None)
        if client is not None:
            self._refresh_workers(force=True)
            if self._futures:
                if cancel:
                    client.cancel(list(self._futures))
                else:
                    distributed.wait(list(self._futures))
            self._futures.clear()
            client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(cancel=True)
