"""The sandbox's shared torch-extension cache: a killed build's lock is cleared, a live one kept."""

from __future__ import annotations

import os
import time
from pathlib import Path

from trainfleet.sandbox.docker import STALE_BUILD, clear_stale_build_locks


def test_only_a_dead_builds_lock_is_removed(tmp_path: Path) -> None:
    dead = tmp_path / "py311_cpu" / "fused_adam" / "lock"
    live = tmp_path / "py311_cpu" / "deepspeed_shm_comm" / "lock"
    for lock in (dead, live):
        lock.parent.mkdir(parents=True)
        lock.touch()
    old = time.time() - STALE_BUILD - 60
    os.utime(dead, (old, old))
    assert clear_stale_build_locks(str(tmp_path)) == [str(dead)]
    assert not dead.exists() and live.exists()
