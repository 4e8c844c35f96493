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


@pytest.fixture(autouse=True)
def grouped_by_xdist(request):
    """Under `--dist loadgroup` each worker tags grouped tests' node ids with `@group`; a pytest that
    drops the tag (9.2 with pytest-xdist 3.8) silently spreads a group over both workers: the Slurm
    tests then compete for the cluster's two CPUs and module fixtures run twice. Fail instead."""
    node = request.node
    if getattr(request.config.option, "loadgroup", False) and node.get_closest_marker("xdist_group") \
            and "@" not in node.nodeid.split("]")[-1]:
        pytest.fail(f"pytest-xdist could not group this test with pytest {pytest.__version__}: install the "
                    "versions in constraints.txt (make install)")
