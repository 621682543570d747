"""The fleet's SSH key, pinned host keys and aliases on a node: added, checked, removed.

Everything added is marked with the fleet's tag, and what existed before is recorded in
a state file, so that `untrust` puts each file back byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from typing import Dict, List, Optional

from .protocol import Reach, SSHMatrixReply, SSHMatrixRequest, TrustReply, TrustRequest, UntrustReply, UntrustRequest
from .files import write_atomically


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _write_if_changed(path: str, text: str, mode: int, changed: List[str]) -> None:
    if _read(path) == text:
        if (os.stat(path).st_mode & 0o777) != mode:
            os.chmod(path, mode)
            changed.append(path)
        return
    write_atomically(path, text, mode)
    changed.append(path)


def _without_block(text: str, begin: str, end: str) -> str:
    inside, kept = False, []
    for line in text.splitlines(True):
        if line.strip() == begin:
            inside = True
        elif line.strip() == end and inside:
            inside = False
        elif not inside:
            kept.append(line)
    return "".join(kept)


def _markers(tag: str) -> tuple:
    return "# >>> trainfleet %s >>>" % tag, "# <<< trainfleet %s <<<" % tag


def trust(request: TrustRequest) -> TrustReply:
    """Install the fleet key pair, pinned host keys and aliases; touch nothing else."""
    ssh = os.path.join(os.path.expanduser("~"), ".ssh")
    tag = request.tag
    changed: List[str] = []
    if not os.path.isdir(ssh):
        os.makedirs(ssh, 0o700)
        changed.append(ssh)
    if os.stat(ssh).st_mode & 0o077:
        os.chmod(ssh, 0o700)
        changed.append(ssh)
    state_path = os.path.join(ssh, "trainfleet_%s.state" % tag)
    state = json.loads(_read(state_path) or "{}")
    key_path = os.path.join(ssh, "trainfleet_%s" % tag)
    _write_if_changed(key_path, request.private_key, 0o600, changed)
    _write_if_changed(key_path + ".pub", request.public_key + "\n", 0o644, changed)
    _write_if_changed(os.path.join(ssh, "trainfleet_%s_known_hosts" % tag), request.known_hosts, 0o644, changed)

    authorized = os.path.join(ssh, "authorized_keys")
    current = _read(authorized)
    mark = " trainfleet:%s" % tag
    # The fleet key (every node holds it) only from the fleet's own addresses; the
    # controller's own key (never on a node) from anywhere.
    restriction = 'from="%s" ' % ",".join(request.sources) if request.sources else ""
    lines = [restriction + request.public_key.split(" trainfleet:")[0].strip() + mark]
    if request.controller_key:
        lines.append(request.controller_key.split(" trainfleet:")[0].strip() + mark)
    if current is None:
        state.setdefault("authorized_keys_created", True)
        current = ""
    others = [line for line in current.splitlines(True) if not line.rstrip("\n").endswith(mark)]
    if [line.rstrip("\n") for line in current.splitlines(True) if line.rstrip("\n").endswith(mark)] != lines:
        text = "".join(others)
        if text and not text.endswith("\n"):
            state["authorized_keys_newline_added"] = True
            text += "\n"
        _write_if_changed(authorized, text + "".join(line + "\n" for line in lines), 0o600, changed)

    config_path = os.path.join(ssh, "config")
    config = _read(config_path)
    if config is None:
        state.setdefault("config_created", True)
        config = ""
    begin, end = _markers(tag)
    block = "%s\n%s%s\n" % (begin, request.ssh_config, end)
    # First match wins in ssh_config: the fleet's aliases go on top.
    _write_if_changed(config_path, block + _without_block(config, begin, end), 0o600, changed)

    errors: List[str] = []
    if request.hosts:
        hosts = _read("/etc/hosts") or ""
        wanted = _without_block(hosts, begin, end)
        if wanted and not wanted.endswith("\n"):
            wanted += "\n"
        wanted += "%s\n%s%s\n" % (begin, request.hosts, end)
        try:
            if hosts != wanted:
                with open("/etc/hosts", "w") as handle:  # in place: /etc/hosts may be a bind mount
                    handle.write(wanted)
                changed.append("/etc/hosts")
        except OSError as exc:
            errors.append("/etc/hosts: %s (needs root)" % exc.strerror)
    if changed or not os.path.exists(state_path):
        _write_if_changed(state_path, json.dumps(state), 0o600, changed)
    return TrustReply(changed=changed, errors=errors)


def _put_back(path: str, text: str, created_by_us: bool, restored: List[str], removed: List[str]) -> None:
    """Leave `path` holding `text`; a file `trust` created and that is now empty goes."""
    if not text and created_by_us:
        os.unlink(path)
        removed.append(path)
    else:
        write_atomically(path, text)  # a full disk or a crash must not leave authorized_keys half written
        restored.append(path)


def untrust(request: UntrustRequest) -> UntrustReply:
    """Remove exactly what `trust` added."""
    ssh = os.path.join(os.path.expanduser("~"), ".ssh")
    tag = request.tag
    restored: List[str] = []
    removed: List[str] = []
    state_path = os.path.join(ssh, "trainfleet_%s.state" % tag)
    state = json.loads(_read(state_path) or "{}")
    authorized = os.path.join(ssh, "authorized_keys")
    current = _read(authorized)
    if current is not None:
        kept = [line for line in current.splitlines(True) if not line.rstrip("\n").endswith(" trainfleet:%s" % tag)]
        text = "".join(kept)
        if state.get("authorized_keys_newline_added") and text.endswith("\n"):
            text = text[:-1]
        if text != current:
            _put_back(authorized, text, bool(state.get("authorized_keys_created")), restored, removed)
    begin, end = _markers(tag)
    config_path = os.path.join(ssh, "config")
    config = _read(config_path)
    if config is not None:
        text = _without_block(config, begin, end)
        if text != config:
            _put_back(config_path, text, bool(state.get("config_created")), restored, removed)
    hosts = _read("/etc/hosts")
    if hosts is not None and begin in hosts:
        try:
            with open("/etc/hosts", "w") as handle:
                handle.write(_without_block(hosts, begin, end))
            restored.append("/etc/hosts")
        except OSError:
            pass
    for name in ("trainfleet_%s" % tag, "trainfleet_%s.pub" % tag, "trainfleet_%s_known_hosts" % tag,
                 "trainfleet_%s.state" % tag):
        path = os.path.join(ssh, name)
        if os.path.exists(path):
            os.unlink(path)
            removed.append(path)
    return UntrustReply(restored=restored, removed=removed)


def ssh_matrix(request: SSHMatrixRequest) -> SSHMatrixReply:
    reach: Dict[str, Reach] = {}

    def attempt(alias: str) -> None:
        try:
            done = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=%d" % request.timeout, alias,
                                   'echo "$SSH_CONNECTION"'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True, timeout=request.timeout + 10)
            last = done.stderr.strip().splitlines()[-1:]
            seen = (done.stdout.strip().splitlines() or [""])[-1].split()
            reach[alias] = Reach(ok=done.returncode == 0, error=last[0] if last else "",
                                 source=seen[0] if done.returncode == 0 and seen else "")
        except (OSError, subprocess.SubprocessError) as exc:
            reach[alias] = Reach(ok=False, error=str(exc))

    threads = [threading.Thread(target=attempt, args=(alias,)) for alias in request.aliases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return SSHMatrixReply(reach=reach)
