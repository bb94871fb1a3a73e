"""Running a benchmark script as its README says, from the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_bench(*argv: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """``python -m bench.… ARGV``; fails the test with its output unless it exits 0."""
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=REPO_ROOT,  # bench is not installed; it is found from the repository root
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    return done
