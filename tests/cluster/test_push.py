"""`trainfleet push` on a real sandbox: a chain through the nodes, into each node's
private /tmp (what proves a copy), checked by sha256 from outside the nodes."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Sandboxes
from helpers import node_tmp, tf, tf_start
from trainfleet.sandbox import cluster as sb
from trainfleet.sandbox import faults

MIB = 1 << 20


@pytest.fixture(scope="module")
def pushing(sandboxes: Sandboxes) -> Iterator[sb.SandboxState]:
    """Nodes of this module's own: tests here cap the controller's link and kill a node."""
    state = sandboxes.make(3, slots=1)
    yield state
    sandboxes.remove(state)


@pytest.fixture
def fleet(pushing: sb.SandboxState) -> Iterator[Path]:
    yield Path(pushing.fleet_file)
    faults.clear(pushing.name)


def random_file(path: Path, mib: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        for _ in range(mib):
            block = os.urandom(MIB)
            digest.update(block)
            handle.write(block)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_directory_reaches_every_node_checked_and_is_not_sent_twice(fleet: Path, pushing: sb.SandboxState,
                                                                      tmp_path: Path) -> None:
    data = tmp_path / "dataset"
    (data / "shards").mkdir(parents=True)
    digests = {"shards/a.bin": random_file(data / "shards" / "a.bin", 3), "b.bin": random_file(data / "b.bin", 1)}
    (data / "empty.txt").write_text("")
    digests["empty.txt"] = sha256(data / "empty.txt")
    (data / "b.bin").chmod(0o600)  # a private file stays private on every node
    pushed = tf("push", "-f", str(fleet), str(data), "/tmp/ds", timeout=120)
    assert pushed.returncode == 0, pushed.stderr
    for node in pushing.nodes:
        assert oct((node_tmp(pushing, node.name) / "ds" / "b.bin").stat().st_mode & 0o777) == "0o600"
    assert "pushing " in pushed.stderr and "(4.0 MiB, 3 file(s)) to /tmp/ds on node[0-2]" in pushed.stderr
    assert re.search(r"pushed .* to node\[0-2\] in [0-9.]+s: sent 4.0 MiB once .*sha256 checked on every node",
                     pushed.stderr), pushed.stderr
    for node in ("node0", "node1", "node2"):
        for relative, digest in digests.items():
            assert sha256(node_tmp(pushing, node) / "ds" / relative) == digest, (node, relative)
        assert not list((node_tmp(pushing, node) / "ds").rglob("*.tfpart"))
    again = tf("push", "-f", str(fleet), str(data), "/tmp/ds", timeout=120)
    assert again.returncode == 0 and "nothing to send: node[0-2] already hold" in again.stderr, again.stderr
    # One file to a path of its own, relative paths under the workdir.
    one = tf("push", "-f", str(fleet), str(data / "b.bin"), "models/b-copy.bin", timeout=120)
    assert one.returncode == 0, one.stderr
    assert sha256(node_tmp(pushing, "node2") / "trainfleet" / "models" / "b-copy.bin") == digests["b.bin"]


def test_through_a_capped_link_the_nodes_share_one_copy_of_the_bytes(fleet: Path, pushing: sb.SandboxState,
                                                                    tmp_path: Path) -> None:
    """Pipelining, not a timing target (bench/push.py measures that): sent once through a
    link capped at 50 Mbit/s, 32 MiB reaches three nodes in well under the 3x that
    copying to each in turn takes."""
    digest = random_file(tmp_path / "data.bin", 32)
    faults.inject(pushing.name, faults.CONTROLLER, faults.FaultKind.CAP, rate="50mbit")
    once = 32 * MIB * 8 / 50e6
    started = time.monotonic()
    pushed = tf("push", "-f", str(fleet), str(tmp_path / "data.bin"), "/tmp/capped/", timeout=180)
    seconds = time.monotonic() - started
    assert pushed.returncode == 0, pushed.stderr
    assert "sent 32.0 MiB once" in pushed.stderr
    for node in ("node0", "node1", "node2"):
        assert sha256(node_tmp(pushing, node) / "capped" / "data.bin") == digest
    assert seconds < 2 * once, f"{seconds:.1f}s for what the link carries once in {once:.1f}s"


def test_a_node_killed_mid_push_is_named_the_others_complete_and_it_resumes(fleet: Path, pushing: sb.SandboxState,
                                                                           tmp_path: Path) -> None:
    digest = random_file(tmp_path / "data.bin", 48)
    faults.inject(pushing.name, faults.CONTROLLER, faults.FaultKind.CAP, rate="50mbit")
    run = tf_start("push", "-f", str(fleet), "--stall-timeout", "5", str(tmp_path / "data.bin"), "/tmp/killed/")
    part = node_tmp(pushing, "node1") / "killed" / ".data.bin.tfpart"
    deadline = time.monotonic() + 60
    while (not part.exists() or part.stat().st_size < 12 * MIB) and time.monotonic() < deadline:
        time.sleep(0.1)
    faults.inject(pushing.name, "node1", faults.FaultKind.KILL)  # the middle of the chain
    out, err = run.communicate(timeout=180)
    assert run.returncode == 1, err
    assert re.search(r"^trainfleet: error: push to node1 failed: .+; fix: ", err, re.MULTILINE), err
    assert "Traceback" not in err and "push to node0" not in err and "push to node2" not in err
    assert re.search(r"pushed .* to node\[0,2\] in", err), err
    for node in ("node0", "node2"):
        assert sha256(node_tmp(pushing, node) / "killed" / "data.bin") == digest
    assert not (node_tmp(pushing, "node1") / "killed" / "data.bin").exists()  # never a wrong file
    kept = part.stat().st_size
    assert kept >= 12 * MIB
    faults.clear(pushing.name, "node1")  # the machine is back, with what it had received
    again = tf("push", "-f", str(fleet), str(tmp_path / "data.bin"), "/tmp/killed/", timeout=180)
    assert again.returncode == 0, again.stderr
    assert re.search(r"already there: node0 48.0 MiB; node1 [0-9.]+ MiB; node2 48.0 MiB", again.stderr), again.stderr
    sent = float(re.search(r"sent ([0-9.]+) MiB once", again.stderr).group(1))
    assert sent <= 48 - kept / MIB + 0.1, again.stderr
    assert sha256(node_tmp(pushing, "node1") / "killed" / "data.bin") == digest


def test_bad_input_is_one_line(fleet: Path, tmp_path: Path) -> None:
    missing = tf("push", "-f", str(fleet), str(tmp_path / "nope"), "/tmp/x", timeout=60)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = tf("push", "-f", str(fleet), str(empty), "/tmp/x", timeout=60)
    assert nothing.returncode != 0 and "no files to push" in nothing.stderr and "Traceback" not in nothing.stderr
