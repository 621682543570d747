"""What the tests share: the CLI as a user runs it, and ways to look inside sandbox nodes."""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trainfleet.sandbox import cluster as sb

REPO = Path(__file__).resolve().parents[1]
JOBS = Path(__file__).resolve().parent / "jobs"
EXAMPLE = REPO / "examples" / "charlm"


def tf(*args: str, timeout: float = 120, cwd: Path | None = None, env: dict[str, str] | None = None,
       check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the real `trainfleet` command line."""
    completed = subprocess.run([sys.executable, "-m", "trainfleet", *args], capture_output=True, text=True,
                               timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})},
                               stdin=subprocess.DEVNULL)
    if check and completed.returncode != 0:
        raise AssertionError(f"trainfleet {' '.join(args)} failed ({completed.returncode}):\n"
                             f"{completed.stdout}\n{completed.stderr}")
    return completed


EXIT_ABORT = "terminate called without an active exception"


def torch_exit_abort(done: subprocess.CompletedProcess[str]) -> bool:
    """torch 2.13 on the CPU sometimes aborts a rank in C++ teardown after its work is done
    (about one run in six): a fault of that build, never what a test is about."""
    return done.returncode != 0 and EXIT_ABORT in done.stdout + done.stderr


def tf_training(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """`tf` for a run that trains with torch, once more if a rank hit torch's exit abort."""
    done = tf(*args, **kwargs)  # type: ignore[arg-type]
    return tf(*args, **kwargs) if torch_exit_abort(done) else done  # type: ignore[arg-type]


def tf_start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "trainfleet", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
                            stdin=subprocess.DEVNULL)


def wait_for_line(process: subprocess.Popen[str], pattern: str, timeout: float) -> list[str]:
    """The lines up to the first that matches. Read from the pipe itself a byte at a time,
    never ahead of that line: `communicate()` afterwards reads the pipe, not the text
    reader, and would lose whatever a buffered reader had taken beyond it."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen: list[str] = []
    held = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        byte = os.read(fd, 1)
        if not byte:
            break
        held += byte
        if byte != b"\n":
            continue
        line = held.decode(errors="replace")
        held.clear()
        seen.append(line)
        if re.search(pattern, line):
            return seen
    process.kill()
    raise AssertionError(f"never saw {pattern!r}; got:\n{''.join(seen)[-3000:]}")


def unique_name(prefix: str) -> str:
    return f"{prefix}{os.getpid() % 100000:x}"[:10]


alive = sb.running  # a zombie waiting for its parent to reap it is not running


job_processes_on = sb.job_processes


def wait_until_no_job_processes(state: sb.SandboxState, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(job_processes_on(n) for n in state.nodes) and time.monotonic() < deadline:
        time.sleep(0.2)


def node_tmp(state: sb.SandboxState, node: str) -> Path:
    """A node's private /tmp, seen from this machine."""
    return Path(state.directory) / "nodes" / node / "tmp"


def ssh_logins(state: sb.SandboxState) -> dict[str, int]:
    """How many SSH connections each node's sshd has accepted so far."""
    counts = {}
    for node in state.nodes:
        log = Path(state.directory) / "nodes" / node.name / "sshd.log"
        counts[node.name] = log.read_text(errors="replace").count("Accepted publickey")
    return counts


def losses(output: str, head: str = "node0") -> list[float]:
    return [float(x) for x in re.findall(rf"^\[{head}:0\] step \d+ loss ([0-9.]+)", output, re.MULTILINE)]


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


@contextmanager
def s3_server(address: str, bucket: str, key_id: str, secret: str) -> Iterator[str]:
    """moto's S3 server (a real S3-compatible HTTP server) on `address`, with one bucket;
    yields its endpoint URL."""
    port = free_port(address)
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", address, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://{address}:{port}"
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key_id,
                              aws_secret_access_key=secret)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket=bucket)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        yield endpoint
    finally:
        server.terminate()
        server.wait(10)


def text_files_holding(value: str, roots: list[Path], exclude_dirs: tuple[str, ...] = ()) -> list[str]:
    """Text files under `roots` that hold `value` (grep: fast over big trees such as ~/.cache)."""
    hits = []
    for root in roots:
        if root.exists():
            found = subprocess.run(["grep", "-rlsI", *(f"--exclude-dir={d}" for d in exclude_dirs), value, str(root)],
                                   capture_output=True, text=True)
            hits += found.stdout.split()
    return hits


# ---- golden files of plans (tests/unit) ----

GOLDEN = Path(__file__).resolve().parent / "unit" / "golden"
UPDATE = os.environ.get("TRAINFLEET_UPDATE_GOLDEN") == "1"

PLAN_FLEET: dict[str, object] = {
    "workdir": "~/job",
    "python": "/opt/venv/bin/python",
    "env": {"NCCL_DEBUG": "WARN"},
    "ssh": {"user": "ubuntu"},
    "nodes": [
        {"name": "gpu0", "host": "203.0.113.10", "address": "10.0.0.10", "interface": "ens5", "slots": 4},
        {"name": "gpu1", "host": "203.0.113.11", "address": "10.0.0.11", "slots": 2},
    ],
}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"missing {path}; create it with TRAINFLEET_UPDATE_GOLDEN=1 pytest tests/unit"
    expected = path.read_text()
    assert text == expected, (f"{path.name} changed; if the new plan is right, regenerate it with "
                              f"TRAINFLEET_UPDATE_GOLDEN=1 pytest tests/unit")
