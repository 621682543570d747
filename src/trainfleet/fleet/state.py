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


def _read_mapping(fleet: Fleet, name: str) -> dict[str, Any]:
    """A JSON object kept in the fleet's state directory ({} when missing or unreadable)."""
    if not fleet.ssh.state_dir:
        return {}
    try:
        with open(os.path.join(fleet.ssh.state_dir, name)) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def kept_agents(fleet: Fleet) -> dict[str, tuple[str, str]]:
    """Resident agents' socket paths and secrets by key, from the fleet's state (none if
    unreadable; an entry without a secret, from an older trainfleet, is left out)."""
    if fleet.ssh.keep_agent <= 0:
        return {}
    return {k: (v[0], v[1]) for k, v in _read_mapping(fleet, KEPT_FILE).items()
            if isinstance(k, str) and isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)}


def save_kept_agents(fleet: Fleet, kept: dict[str, tuple[str, str]]) -> None:
    """Written whole (0600: it holds the residents' secrets) and renamed into place; a
    command that cannot is no worse off."""
    try:
        os.makedirs(fleet.ssh.state_dir, 0o700, exist_ok=True)
        write_atomically(os.path.join(fleet.ssh.state_dir, KEPT_FILE),
                         json.dumps({k: list(v) for k, v in kept.items()}, indent=0, sort_keys=True),
                         mode=0o600, durable=False)
    except OSError:
        pass


CORDON_FILE = "cordoned.json"


def cordoned(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Nodes a job lost, left out of `run` until `trainfleet uncordon`: by name, the job
    that lost it, when, and why (none if unreadable)."""
    known = {n.name for n in fleet.nodes}
    return {k: v for k, v in _read_mapping(fleet, CORDON_FILE).items() if k in known and isinstance(v, dict)}


def _save_cordoned(fleet: Fleet, data: dict[str, dict[str, Any]]) -> None:
    os.makedirs(fleet.ssh.state_dir, 0o700, exist_ok=True)
    write_atomically(os.path.join(fleet.ssh.state_dir, CORDON_FILE), json.dumps(data, indent=1, sort_keys=True),
                     durable=False)


def cordon(fleet: Fleet, lost: dict[str, str], job_id: str, at: float | None = None) -> list[str]:
    """Record nodes `job_id` lost (name -> why); returns those not cordoned before. A node
    that was uncordoned after that job ended is not cordoned again by it."""
    if not fleet.ssh.state_dir or not lost:
        return []
    data = _read_mapping(fleet, CORDON_FILE)
    released = data.pop("_uncordoned", {}) if isinstance(data.get("_uncordoned"), dict) else {}
    moment = at or time.time()
    new = [n for n in sorted(lost) if n not in data and released.get(n, 0) < moment]
    for name in new:
        data[name] = {"job": job_id, "at": moment, "why": lost[name]}
    if new:
        try:
            _save_cordoned(fleet, {**data, "_uncordoned": released})
        except OSError:
            return []
    return new


def uncordon(fleet: Fleet, names: list[str]) -> list[str]:
    """Let these nodes back into `run`; returns those that were cordoned."""
    data = _read_mapping(fleet, CORDON_FILE)
    if not data:
        return []
    released = data.pop("_uncordoned", {}) if isinstance(data.get("_uncordoned"), dict) else {}
    freed = [n for n in names if n in data]
    now = time.time()
    for name in freed:
        del data[name]
        released[name] = now
    _save_cordoned(fleet, {**data, "_uncordoned": released})
    return freed


def forget_cordons(fleet_file: Path) -> None:
    """Every cordon of the fleet file at this path (its machines were made anew)."""
    from trainfleet.fleet.load import state_dir_for

    try:
        os.unlink(os.path.join(state_dir_for(fleet_file), CORDON_FILE))
    except OSError:
        pass
