"""The examples run end to end (they are documentation that must not rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_the_whole_lifecycle_on_a_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "quickstart.db"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "next acme/nightly   : 2026-03-08T07:00:00+00:00" in result.stdout
    assert "acme retry at       : 2026-03-08T07:03:05+00:00" in result.stdout
    assert "globex              : COMPLETED=1; success rate 1.0" in result.stdout
    assert db.exists()
