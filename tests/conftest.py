"""Shared fixtures. Telemetry off for every test; one Prefect server for the whole session.

Tests never use a GPU: the Triton kernels run under Triton's interpreter, on CPU tensors.
TRITON_INTERPRET must be set before triton is first imported, so it is set here, for the
whole session and the processes it starts; the sm_90 compile (test_kernels_compile.py) runs
in processes without it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

for _k, _v in {"DO_NOT_TRACK": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
               "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
               "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "TRITON_INTERPRET": "1"}.items():
    os.environ.setdefault(_k, _v)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_api_url():
    """A Prefect test server shared by every test that runs flows (in-process or in subprocesses)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
