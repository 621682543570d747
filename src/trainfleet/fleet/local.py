"""What the controller's machine supplies to a fleet: its user, the default for `ssh: {user}`."""

from __future__ import annotations


def local_user() -> str:
    import getpass

    return getpass.getuser()
