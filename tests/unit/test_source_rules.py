"""Rules the source keeps, read from the source itself."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_no_unsafe_ssh_settings_in_the_source() -> None:
    source = Path(__file__).resolve().parents[2] / "src"
    found = subprocess.run(["grep", "-rn", r"StrictHostKeyChecking=no\|PermitRootLogin yes", str(source)],
                           capture_output=True, text=True)
    assert found.stdout == ""
