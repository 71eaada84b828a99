"""Where independent pieces of work run: in this process, or on Dask through Prefect's Dask task runner.

``params.yaml`` ``runner.kind`` chooses (DESIGN "Scale-out"):

* ``local`` (default): a plain loop in this process (the engines keep their own process pools);
* ``dask_local``: a Dask ``LocalCluster`` of ``runner.n_workers`` worker *processes* (one thread each),
  started for one call and closed after it;
* ``dask_address``: an existing Dask scheduler at ``runner.address`` (``dask scheduler`` + ``dask worker``).

:func:`map_in_runner` runs ``fn(item)`` for every item and returns the results in item order, whatever the
runner, so callers (LOO folds, tuning workers, map windows) assemble identical outputs. With Dask the items
become Prefect tasks of one flow run, so every call is visible in the Prefect API like the other flows.

Process workers pickle what they run: ``fn`` must be a module-level function (or a ``functools.partial``
of one) and the items plain data. Process workers also need the Prefect API of the caller (STACK-NOTES:
otherwise each worker starts a temporary API of its own); for ``dask_local`` its URL is passed in the
workers' environment, for ``dask_address`` the workers must have ``PREFECT_API_URL`` set themselves.
"""
from __future__ import annotations

import itertools
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from soilmoisture.config import Runner

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

FLOW_NAME = "soilmoisture-map-in-runner"


def is_distributed(runner: Runner) -> bool:
    """True when ``runner.kind`` sends work to Dask workers."""
    return runner.kind != "local"


def prefect_api_url() -> str:
    """The Prefect API this process talks to; the temporary local one is started here if none is set.

    Process workers must report to the same API as the flow run that submits their tasks.
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()   # the same instance Prefect's client uses for the temporary API
    server.start()
    return server.api_url


def worker_env(api_url: str) -> dict[str, str]:
    """Environment of ``dask_local`` worker processes: the caller's Prefect API, one XLA thread each
    (one worker per core; jax reads the flag when it is first imported in the worker)."""
    from soilmoisture.model.jax_engine import SINGLE_THREAD_XLA_FLAGS

    xla = (os.environ.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA_FLAGS).strip()
    return {"PREFECT_API_URL": api_url, "XLA_FLAGS": xla,
            "PREFECT_LOGGING_TO_API_ENABLED": os.environ.get("PREFECT_LOGGING_TO_API_ENABLED", "false")}


def check_scheduler(address: str, timeout: float = 10.0) -> None:
    """Fail early, naming ``runner.address``, when no Dask scheduler answers there (instead of a Dask
    client timing out inside the flow run)."""
    import socket
    from urllib.parse import urlsplit

    from soilmoisture.errors import BackendError

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if parts.scheme not in ("tcp", "tls") or not host or not port:
        raise BackendError("dask scheduler (runner.address)", address, "expected tcp://HOST:PORT, e.g. "
                           "tcp://127.0.0.1:8786")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise BackendError("dask scheduler (runner.address)", address,
                           f"not reachable ({e.strerror or e}); start one with `dask scheduler` "
                           "or use runner.kind=dask_local") from None


def task_runner(runner: Runner) -> Any | None:
    """The Prefect task runner for ``runner`` (a ``DaskTaskRunner``), or None for ``local``."""
    if not is_distributed(runner):
        return None
    from prefect_dask import DaskTaskRunner

    if runner.kind == "dask_address":
        check_scheduler(str(runner.address))
        return DaskTaskRunner(address=runner.address)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": runner.n_workers, "processes": True, "threads_per_worker": 1,
                                          "dashboard_address": None, "env": worker_env(prefect_api_url())})


def chunks(n: int, n_chunks: int, align: int = 1) -> list[range]:
    """``range(n)`` cut into at most ``n_chunks`` contiguous pieces, sizes a multiple of ``align`` (the last
    may be shorter): e.g. fold models in multiples of the engine's group size, one piece per worker."""
    if n <= 0:
        return []
    size = -(-n // max(n_chunks, 1))
    size = -(-size // max(align, 1)) * max(align, 1)
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


_TASK: Any = None
_FLOW: Any = None


def _prefect_objects() -> tuple[Any, Any]:
    """The module-level Prefect task (pickled by reference to the workers) and flow, built on first use so
    importing this module does not import Prefect."""
    global _TASK, _FLOW
    if _TASK is None:
        from prefect import flow, task
        from prefect.cache_policies import NO_CACHE

        # No cache key (hashing large arrays for nothing), no result storage: results travel back via Dask.
        _TASK = task(_call, name="soilmoisture-item", cache_policy=NO_CACHE, persist_result=False)
        _FLOW = flow(_run_flow, name=FLOW_NAME, persist_result=False, validate_parameters=False)
    return _TASK, _FLOW


# What the running flow works on; passed by reference, not as flow parameters (Prefect would copy the
# parameters into every task's context and try to store them in its API).
_WORK: dict[str, tuple[Callable[[Any], Any], Sequence[Any], Callable[[int, Any], None] | None, int]] = {}


def _run_flow(label: str, n_items: int, key: str) -> list[Any]:
    """Submit the items as tasks, at most ``max_in_flight`` at once; collect results in item order."""
    task, _ = _prefect_objects()
    fn, items, consume, max_in_flight = _WORK[key]
    results: list[Any] = []
    rest = iter(items)
    pending = deque(task.submit(fn, item) for item in itertools.islice(rest, max_in_flight))
    done = 0
    while pending:
        value = pending.popleft().result()   # raises the task's own exception if it failed
        if consume is not None:
            consume(done, value)
        else:
            results.append(value)
        done += 1
        pending.extend(task.submit(fn, item) for item in itertools.islice(rest, 1))
    return results


def map_in_runner(fn: Callable[[T], R], items: Iterable[T], runner: Runner, *, label: str = "work",
                  consume: Callable[[int, R], None] | None = None, max_in_flight: int | None = None) -> list[R]:
    """``[fn(item) for item in items]`` in this process (``local``) or as Prefect tasks on Dask.

    Results come back in item order. With ``consume`` each result is handed to ``consume(index, result)``
    as soon as it and all earlier ones are done, and not kept (the returned list is then empty): with
    ``max_in_flight`` (default 2 per worker) this bounds memory, e.g. for map windows.
    """
    items = list(items)
    if not is_distributed(runner):
        out: list[R] = []
        for i, item in enumerate(items):
            r = fn(item)
            if consume is not None:
                consume(i, r)
            else:
                out.append(r)
        return out
    if not items:
        return []
    _, flow = _prefect_objects()
    key = f"{os.getpid()}-{id(items)}"
    in_flight = max_in_flight or (len(items) if consume is None else 2 * runner.n_workers)
    _WORK[key] = (fn, items, consume, max(1, in_flight))
    where = runner.address if runner.kind == "dask_address" else f"LocalCluster({runner.n_workers} processes)"
    log.info("runner %s: %d %s item(s) on %s", runner.kind, len(items), label, where)
    try:
        return flow.with_options(task_runner=task_runner(runner), flow_run_name=f"{label}-{len(items)}")(
            label, len(items), key)
    finally:
        _WORK.pop(key, None)


__all__ = ["check_scheduler", "chunks", "is_distributed", "map_in_runner", "prefect_api_url", "task_runner",
           "worker_env"]
