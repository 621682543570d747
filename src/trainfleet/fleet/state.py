"""What the controller keeps of a fleet in its state directory (`ssh.state_dir`, beside the
fleet's key and pinned host keys): the latest doctor report and `bench net` numbers, so
that `trainfleet ui` shows them without measuring again, and where each node's resident
agent listens, for the next command. Every file is written whole or not at all; none is
ever needed (a command without them only does more work)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from trainfleet.agent.files import write_atomically
from trainfleet.fleet.model import Fleet

KINDS = ("doctor", "netbench")


def _path(fleet: Fleet, kind: str) -> Path | None:
    assert kind in KINDS
    return Path(fleet.ssh.state_dir) / f"latest-{kind}.json" if fleet.ssh.state_dir else None


def save_latest(fleet: Fleet, kind: str, data: dict[str, Any]) -> None:
    """Written whole or not at all (a reader never sees half a file); never fatal."""
    path = _path(fleet, kind)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomically(path, json.dumps({"saved": time.time(), "data": data}), durable=False)
    except OSError:
        pass


def load_latest(fleet: Fleet, kind: str) -> dict[str, Any] | None:
    """{"saved": epoch seconds, "data": ...}, or None when there is none (or it is unreadable)."""
    path = _path(fleet, kind)
    if path is None:
        return None
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) and "data" in found else None


KEPT_FILE = "agents.json"


def kept_agents(fleet: Fleet) -> dict[str, str]:
    """Resident agents' socket paths by key, from the fleet's state (none if unreadable)."""
    if not fleet.ssh.state_dir or fleet.ssh.keep_agent <= 0:
        return {}
    try:
        with open(os.path.join(fleet.ssh.state_dir, KEPT_FILE)) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


def save_kept_agents(fleet: Fleet, kept: dict[str, str]) -> None:
    """Written whole and renamed into place; a command that cannot is no worse off."""
    try:
        os.makedirs(fleet.ssh.state_dir, 0o700, exist_ok=True)
        write_atomically(os.path.join(fleet.ssh.state_dir, KEPT_FILE), json.dumps(kept, indent=0, sort_keys=True),
                         durable=False)
    except OSError:
        pass
