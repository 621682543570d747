"""Where a resident agent may listen: every folder from the home down is the user's own,
writable by nobody else, and no link (a socket planted there would get the next command)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trainfleet.agent.resident import proof, unsafe


def test_only_folders_of_the_users_own_hold_its_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    folder = home / ".cache" / "trainfleet" / "agents"
    assert unsafe(str(folder)) == ""  # made, 0700
    assert folder.stat().st_mode & 0o777 == 0o700
    (home / ".cache").chmod(0o777)
    assert unsafe(str(folder)) == f"{home / '.cache'} is writable by others (mode 777)"
    (home / ".cache").chmod(0o755)
    folder.chmod(0o750)
    assert unsafe(str(folder)) == f"{folder} is open to others (mode 750)"
    folder.chmod(0o700)
    # A link into shared scratch.
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    (home / ".cache" / "trainfleet").rename(tmp_path / "kept")
    (home / ".cache" / "trainfleet").symlink_to(scratch)
    assert unsafe(str(folder)) == f"{home / '.cache' / 'trainfleet'} is a symbolic link"
    (home / ".cache" / "trainfleet").unlink()
    (tmp_path / "kept").rename(home / ".cache" / "trainfleet")
    if os.geteuid() == 0:  # another user's folder (as root, one can be made)
        os.chown(home / ".cache" / "trainfleet", 65534, 65534)
        assert unsafe(str(folder)) == f"{home / '.cache' / 'trainfleet'} is owned by uid 65534"


def test_the_proof_needs_the_secret() -> None:
    secret, other = "11" * 32, "22" * 32
    assert proof(secret, "c" * 64) == proof(secret, "c" * 64)
    assert proof(secret, "c" * 64) != proof(other, "c" * 64) and proof(secret, "c" * 64) != proof(secret, "d" * 64)
