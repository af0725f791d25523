"""The Prefect side of a stage: the API server it talks to, flow runs a killed attempt left
RUNNING, and the ``nsvq`` logger forwarded into the flow run's log.

Without ``PREFECT_API_URL`` a stage starts its own local server (what Prefect's temporary
server does), but as a child that the kernel stops when the stage process dies, even by
``kill -9`` (Linux ``PR_SET_PDEATHSIG``): Prefect's own temporary server outlived a killed
stage, an orphaned uvicorn still listening. With ``PREFECT_API_URL`` set (a long-lived
``prefect server start``) no server is started, which also saves its 10-20 s start per stage.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from typing import Iterator

from pipeline.tracking import process_token, token_alive

PROCESS_TAG_PREFIX = "nsvq-proc:"


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM this child when its parent exits (Linux only)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _server_class():
    import prefect
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings

    class BoundServer(SubprocessASGIServer):
        """Prefect's temporary server (same command, same env), tied to this process's life."""

        def _run_uvicorn_command(self) -> subprocess.Popen:
            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1",
                   **get_current_settings().to_environment_variables(exclude_unset=True)}
            return subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                 "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "error", "--lifespan", "on"],
                env=env, preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)

    return BoundServer


def use_prefect_api() -> None:
    """Talk to the configured Prefect API, or start a local server for the rest of this
    process. The server stops at exit, after Prefect's log and event workers have drained into
    it (Prefect registers its stop with atexit before those workers start, so it runs after
    them); and with this process, if it is killed."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = _server_class()()
    server.start()
    temporary_settings(updates={PREFECT_API_URL: server.api_url}).__enter__()   # for this process's life


def crash_orphaned_flow_runs(flow_name: str) -> int:
    """Mark Crashed the RUNNING/PENDING flow runs of ``flow_name`` whose process (recorded in a
    ``nsvq-proc:`` tag) is gone: an attempt killed before it could report. Returns how many."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                                FlowRunFilterStateType)
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    marked = 0
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))))
        for run in runs:
            tokens = [t[len(PROCESS_TAG_PREFIX):] for t in run.tags if t.startswith(PROCESS_TAG_PREFIX)]
            if tokens and not token_alive(tokens[0]):
                client.set_flow_run_state(run.id, Crashed(message="its process was killed (found by the next attempt)"),
                                          force=True)
                marked += 1
    return marked


def process_tag() -> str:
    return PROCESS_TAG_PREFIX + process_token()


class _NoEmptyTraceback(logging.Filter):
    """Prefect logs a task that returned a Failed state with exc_info but no exception, which
    prints a stray "NoneType: None" line; a user error is one line, so drop it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is None:
            record.exc_info = None
        return True


class _ToRunLogger(logging.Handler):
    """Forwards the library's ``nsvq`` logger (warnings, resume notes) to the current Prefect
    run's log, which also prints it on the console."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            get_run_logger().log(record.levelno, record.getMessage())
        except MissingContextError:
            print(("warning: " if record.levelno >= logging.WARNING else "") + record.getMessage(), file=sys.stderr)


@contextlib.contextmanager
def forward_library_logs() -> Iterator[None]:
    from pipeline.errors import LOGGER

    handler = _ToRunLogger()
    quiet = _NoEmptyTraceback()
    LOGGER.addHandler(handler)
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    task_logger = logging.getLogger("prefect.task_runs")
    task_logger.addFilter(quiet)
    try:
        yield
    finally:
        LOGGER.removeHandler(handler)
        task_logger.removeFilter(quiet)
