"""Shared test setup: offline hub, a per-machine cache for the tiny models, composed configs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("DVAR_CACHE", str(Path(tempfile.gettempdir()) / "dvar-bench-test-cache"))
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test-all`: two workers on two cores, one torch thread each
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402

from tests.helpers import PROJECT_ROOT  # noqa: E402,F401


@pytest.fixture
def results(tmp_path) -> Path:
    return tmp_path / "results"
