"""`make test` treats pytest's exit code 5 (no tests collected) as a failure, not a pass."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_make_test_fails_when_pytest_collects_nothing():
    # Not the outer make's flags: `make test PYTEST_ARGS=...` passes its override down in MAKEFLAGS, which would beat ours.
    outer = {"MAKEFLAGS", "MAKEOVERRIDES", "MFLAGS", "MAKELEVEL"}
    env = {**{k: v for k, v in os.environ.items() if k not in outer}, "PYTEST_ARGS": "tests/cli -k no_test_has_this_name_zz"}
    result = subprocess.run(["make", "-s", "test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "collected no tests" in result.stdout + result.stderr
