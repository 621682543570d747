"""A fleet's latest doctor report and `bench net` numbers, kept on the controller (in the
fleet's state directory) so that `trainfleet ui` shows them without measuring again."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from trainfleet.agent.files import write_atomically
from trainfleet.fleet.model import Fleet

KINDS = ("doctor", "netbench")


def _path(fleet: Fleet, kind: str) -> Path | None:
    assert kind in KINDS
    return Path(fleet.ssh.state_dir) / f"latest-{kind}.json" if fleet.ssh.state_dir else None


def save(fleet: Fleet, kind: str, data: dict[str, Any]) -> None:
    """Written whole or not at all (a reader never sees half a file); never fatal."""
    path = _path(fleet, kind)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, json.dumps({"saved": time.time(), "data": data}), durable=False)
    except OSError:
        pass


def load(fleet: Fleet, kind: str) -> dict[str, Any] | None:
    """{"saved": epoch seconds, "data": ...}, or None when there is none (or it is unreadable)."""
    path = _path(fleet, kind)
    if path is None:
        return None
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "data" in found else None
