"""Programs the deployment files are checked with, when this machine has them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def program(name: str, *, install: str, required_in_ci: bool) -> str:
    """The path of ``name``; skip without it, but fail in CI when CI must run it."""
    path = shutil.which(name)
    if path is not None:
        return path
    if required_in_ci and os.environ.get("CI"):
        pytest.fail(f"{name} is not installed, and CI must run it ({install})")
    pytest.skip(f"{name} is not installed ({install})")
