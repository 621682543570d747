"""One way to raise a failed operation: `FleetResult.require`, whose error names the nodes,
a fix for the usual causes, and each failed node's command, exit and output tail."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from trainfleet.results import FleetError, FleetResult, NodeResult


@dataclass(frozen=True)
class Fleet:
    python: str = "/opt/venv/bin/python"
    workdir: str = "~/trainfleet"


def failed(node: str, status: int | None, stderr: str = "", error: str | None = None,
           command: str = "make") -> NodeResult:
    return NodeResult(node=node, command=command, exit_status=status, stderr=stderr, error=error)


def test_nodes_that_failed_alike_are_folded_with_their_command_exit_and_stderr_tail() -> None:
    tail = "\n".join(f"line {i}" for i in range(30)) + "\nE: unable to build"
    result = FleetResult((failed("gpu0", 2, tail), failed("gpu1", 2, tail), failed("gpu2", 0),
                          failed("gpu3", None, error="Connection refused by 10.0.0.3:22", command="ssh")))
    with pytest.raises(FleetError) as raised:
        result.require("cannot build", Fleet())
    error = raised.value
    assert error.one_line() == "cannot build: gpu[0-1]: exit status 2; gpu3: Connection refused by 10.0.0.3:22"
    evidence = error.evidence()
    assert evidence[0] == "gpu[0-1]: `make` exited with status 2"
    assert evidence[1:9] == [f"  | line {i}" for i in range(23, 30)] + ["  | E: unable to build"]
    assert evidence[9:] == []  # gpu3 ran nothing: the one line has said all there is
    raised_on_node = FleetResult((failed("gpu0", None, "Traceback (most recent call last):\n  File ...", command="lock",
                                         error="OSError: [Errno 28] No space left on device"),))
    with pytest.raises(FleetError) as again:
        raised_on_node.require("cannot start the job", Fleet())
    assert again.value.evidence() == [] and "Traceback" not in again.value.one_line()


def test_the_fleets_python_missing_everywhere_is_named_with_its_fix() -> None:
    result = FleetResult((failed("a", 127, "sh: 1: /opt/venv/bin/python: not found"), failed("b", 127)))
    with pytest.raises(FleetError, match="`/opt/venv/bin/python` .* was not found on a,b by a non-interactive") as e:
        result.require("cannot start", Fleet())
    assert "set `python:` in the fleet file" in e.value.one_line()
    assert e.value.evidence() == []  # the shell's "not found" would only say it again


def test_a_full_disk_names_the_workdir_to_free() -> None:
    result = FleetResult((failed("a", 1, "OSError: [Errno 28] No space left on device"),))
    with pytest.raises(FleetError) as raised:
        result.require("cannot sync", Fleet())
    assert raised.value.fix == "free space on a (the workdir is ~/trainfleet); `trainfleet doctor` shows what is free where"


def test_a_given_fix_wins_and_success_returns_the_answers() -> None:
    result = FleetResult((failed("a", 1, "denied"),))
    with pytest.raises(FleetError) as raised:
        result.require("cannot pull", Fleet(), fix="check the image name")
    assert raised.value.fix == "check the image name"
    ok = FleetResult((NodeResult(node="a", command="x", exit_status=0),), answers={"a": 5})
    assert ok.require("never") == {"a": 5}
