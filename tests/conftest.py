"""Shared test fixtures: where ../shared lives, and the skip-or-fail rule for it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DRO_SFM_SHARED", REPO_ROOT.parent / "shared"))


def require_shared(*relative: str) -> Path:
    """Path under ../shared; skips the test when absent, but fails under CI=true (CI always has it)."""
    path = SHARED.joinpath(*relative)
    if not path.exists():
        msg = f"{path} is not present (../shared is only available to the project's CI and developers)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on shared, busy cores OpenMP's spinning threads slow tiny convolutions 100x.

    Module-scoped so that module fixtures (rendered sequences, reconstructed runs) run under it too.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
