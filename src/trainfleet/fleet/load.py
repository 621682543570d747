"""Finding and reading the fleet file; the resolved fleet is cached by content.

Validation builds pydantic models, about 0.15 s per command; a content-addressed cache
of the result (keyed by the file's text, its path and the local user) makes repeated
commands on an unchanged fleet file start faster.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from trainfleet.errors import SpecError
from trainfleet.fleet.local import local_user
from trainfleet.fleet.model import Fleet

DEFAULT_FLEET_FILE = "fleet.yaml"
FLEET_ENV_VAR = "TRAINFLEET_FLEET"


def fleet_path(option: str | None) -> Path:
    return Path(option or os.environ.get(FLEET_ENV_VAR) or DEFAULT_FLEET_FILE)


def _xdg(variable: str, default: str) -> Path:
    return Path(os.environ.get(variable) or os.path.expanduser(default))


def state_dir_for(path: Path) -> str:
    """Per fleet file, under $XDG_STATE_HOME/trainfleet/fleets (not beside the fleet file:
    the fleet key must never be one `git add .` away from a public repository)."""
    absolute = path.absolute()
    digest = hashlib.sha256(str(absolute).encode()).hexdigest()[:10]
    return str(_xdg("XDG_STATE_HOME", "~/.local/state") / "trainfleet" / "fleets" / f"{absolute.name}-{digest}")


def _cache_file(path: Path, text: str) -> Path | None:
    if os.environ.get("TRAINFLEET_NO_CACHE"):
        return None
    from trainfleet import __version__

    identity = json.dumps([__version__, str(path.resolve()), os.path.expanduser("~"), local_user(), text,
                           os.environ.get("XDG_STATE_HOME", "")])
    return _xdg("XDG_CACHE_HOME", "~/.cache") / "trainfleet" / "fleets" / \
        f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.json"


def _cached(cache: Path | None, check_keys: bool) -> Fleet | None:
    if cache is None:
        return None
    try:
        fleet = Fleet.from_json(json.loads(cache.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    # A key file deleted since: validate afresh, which names it.
    if check_keys and any(n.identity_file and not os.path.isfile(n.identity_file) for n in fleet.nodes):
        return None
    return fleet


def _store(cache: Path | None, fleet: Fleet) -> None:
    if cache is None:
        return
    try:
        from trainfleet.agent.files import write_atomically

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(cache, json.dumps(fleet.to_json()))
    except OSError:
        pass  # a read-only home only costs speed


def load_fleet(path: Path, check_keys: bool = True) -> Fleet:
    """Read a fleet file: YAML, or a DeepSpeed/MPI hostfile (`host slots=N` lines); without
    `check_keys`, for what uses no SSH (an export), a missing key file is no error."""
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{source}: fleet file not found",
                        fix="run `trainfleet init`, pass -f FILE, or set TRAINFLEET_FLEET") from None
    except IsADirectoryError:
        raise SpecError(f"{source}: is a directory, not a fleet file", fix="pass -f FILE") from None
    except OSError as exc:
        raise SpecError(f"{source}: cannot read fleet file: {exc.strerror}") from None
    cache = _cache_file(path, text)
    fleet = _cached(cache, check_keys)
    if fleet is None:
        from trainfleet.fleet.schema import parse_fleet_text

        fleet = parse_fleet_text(text, source, path.parent, state_dir_for(path), check_keys)
        _store(cache, fleet)
    return fleet
