"""Quoting for the POSIX shells on the nodes."""

from __future__ import annotations

import shlex


def shell_path(path: str) -> str:
    """Quote a path for a shell, leaving a leading ~/ to expand as the node's home."""
    if path == "~" or path.startswith("~/"):
        rest = path[2:]
        return "~/" + shlex.quote(rest) if rest else "~"
    return shlex.quote(path)


def shell_value(value: str) -> str:
    """Quote a variable's value (`NAME=value`, where no shell expands ~): a leading ~/ is
    written as "$HOME"/, the node's home, as the node supervisor expands it."""
    if value == "~" or value.startswith("~/"):
        return '"$HOME"' + ("/" + shlex.quote(value[2:]) if value[2:] else "")
    return shlex.quote(value)


def shell_word(word: str) -> str:
    """Quote one argv word; a leading ~/ still expands (the node agent expands it too)."""
    return shell_path(word) if word.startswith("~/") else shlex.quote(word)
