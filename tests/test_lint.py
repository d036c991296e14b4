"""The repository passes ``ruff check`` with its ruff.toml (ruff is in the ``[test]`` extra)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    # the ruff of this interpreter's environment, so the pinned version is the one run
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff check failed:\n{result.stdout}{result.stderr}"
