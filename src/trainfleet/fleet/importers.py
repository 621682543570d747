"""Fleets from what users already have: DeepSpeed/MPI hostfiles and `~/.ssh/config`.

Both parsers return plain fleet-file data (the same shape as `fleet.yaml`), so an
imported fleet is validated exactly like a written one.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainfleet.errors import SpecError

_HOSTFILE_LINE = re.compile(r"^(?P<host>[^\s#:=]+)(?:\s+slots\s*=\s*(?P<slots>\S+))?\s*(?:#.*)?$")


def _content_lines(text: str) -> list[tuple[int, str]]:
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append((number, line))
    return lines


def looks_like_hostfile(text: str) -> bool:
    lines = _content_lines(text)
    return bool(lines) and all(_HOSTFILE_LINE.match(line) for _, line in lines)


def parse_hostfile(text: str, source: str, ssh_config: SSHConfig | None = None) -> dict[str, Any]:
    """`host slots=N` per line, as DeepSpeed's `--hostfile` and MPI read it."""
    nodes: list[dict[str, Any]] = []
    config = ssh_config if ssh_config is not None else SSHConfig.load_default()
    for number, line in _content_lines(text):
        match = _HOSTFILE_LINE.match(line)
        if not match:
            raise SpecError(f"{source} line {number}: expected `HOST slots=N`, got {line!r}")
        slots_text = match.group("slots") or "1"
        if not slots_text.isdigit() or int(slots_text) < 1:
            raise SpecError(f"{source} line {number}: slots must be a whole number >= 1 (got {slots_text!r})",
                            fix="write e.g. `worker-1 slots=8`")
        node = config.node_entry(match.group("host"))
        node["slots"] = int(slots_text)
        nodes.append(node)
    return {"nodes": nodes}


@dataclass(frozen=True)
class _Block:
    patterns: tuple[str, ...]
    options: tuple[tuple[str, str], ...]

    def matches(self, alias: str) -> bool:
        positive = False
        for pattern in self.patterns:
            if pattern.startswith("!"):
                if fnmatch.fnmatchcase(alias, pattern[1:]):
                    return False
            elif fnmatch.fnmatchcase(alias, pattern):
                positive = True
        return positive


_WANTED = {"hostname", "port", "user", "identityfile", "proxyjump"}


class SSHConfig:
    """The subset of OpenSSH client config that decides where a host alias goes."""

    def __init__(self, blocks: list[_Block], source: str) -> None:
        self.blocks = blocks
        self.source = source

    @classmethod
    def load_default(cls) -> SSHConfig:
        path = Path(os.path.expanduser("~/.ssh/config"))
        return cls.load(path) if path.is_file() else cls([], str(path))

    @classmethod
    def load(cls, path: Path) -> SSHConfig:
        blocks: list[_Block] = []
        cls._read(path, blocks, depth=0)
        return cls(blocks, str(path))

    @classmethod
    def _read(cls, path: Path, blocks: list[_Block], depth: int) -> None:
        if depth > 8:
            raise SpecError(f"{path}: Include nested too deeply")
        try:
            text = path.read_text()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read ssh config: {exc.strerror}") from None
        patterns: tuple[str, ...] = ("*",)
        options: list[tuple[str, str]] = []
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = re.match(r"^(\S+?)(?:\s*=\s*|\s+)(.*)$", line)
            if not match:
                raise SpecError(f"{path} line {number}: expected `Keyword value`, got {line!r}")
            keyword, value = match.group(1).lower(), match.group(2).strip()
            if keyword in ("host", "match"):
                blocks.append(_Block(patterns, tuple(options)))
                options = []
                # A Match block's conditions are not evaluated; it never applies.
                patterns = tuple(shlex.split(value)) if keyword == "host" else ()
            elif keyword == "include":
                blocks.append(_Block(patterns, tuple(options)))
                options = []
                for item in shlex.split(value):
                    item = os.path.expanduser(item)
                    if not os.path.isabs(item):
                        item = str(Path(os.path.expanduser("~/.ssh")) / item)
                    for included in sorted(glob.glob(item)):
                        cls._read(Path(included), blocks, depth + 1)
            elif keyword in _WANTED:
                options.append((keyword, value.strip('"')))
        blocks.append(_Block(patterns, tuple(options)))

    def lookup(self, alias: str) -> dict[str, str]:
        """First value wins, in file order, as in ssh_config(5)."""
        found: dict[str, str] = {}
        for block in self.blocks:
            if not block.matches(alias):
                continue
            for keyword, value in block.options:
                found.setdefault(keyword, value)
        return found

    def node_entry(self, alias: str) -> dict[str, Any]:
        options = self.lookup(alias)
        entry: dict[str, Any] = {"host": options.get("hostname", alias).replace("%h", alias)}
        if entry["host"] != alias:
            entry["name"] = alias
        if "port" in options:
            if not options["port"].isdigit():
                raise SpecError(f"{self.source}: Host {alias}: Port {options['port']!r} is not a number")
            entry["port"] = int(options["port"])
        if "user" in options:
            entry["user"] = options["user"]
        if "identityfile" in options:
            entry["identity_file"] = options["identityfile"]
        if "proxyjump" in options and options["proxyjump"].lower() != "none":
            # Only the first hop of a chain is supported.
            entry["jump"] = options["proxyjump"].split(",")[0]
        return entry

    def aliases(self) -> list[str]:
        names = []
        for block in self.blocks:
            for pattern in block.patterns:
                if not any(ch in pattern for ch in "*?!") and pattern not in names:
                    names.append(pattern)
        return names


def fleet_data_from_ssh_config(config: SSHConfig, aliases: list[str], slots: int) -> dict[str, Any]:
    known = config.aliases()
    chosen = aliases or known
    if not chosen:
        raise SpecError(f"{config.source}: no concrete `Host` entries to import",
                        fix="name the hosts to import, e.g. `trainfleet import ssh-config worker-1 worker-2`")
    nodes = []
    for alias in chosen:
        entry = config.node_entry(alias)
        entry["slots"] = slots
        nodes.append(entry)
    return {"nodes": nodes}
