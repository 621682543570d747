"""The agent's requests and replies survive the wire as the same typed values."""

from __future__ import annotations

import json

from trainfleet.agent.protocol import (JobStatus, Attempt, FactsReply, Interface, JobState, LaunchRequest, Proc, Route, Target,
                                       decode, request_from_wire, to_wire)


def roundtrip(value: object) -> object:
    return decode(type(value), json.loads(json.dumps(to_wire(value))))


def test_nested_replies_decode_to_their_types() -> None:
    reply = FactsReply(hostname="h", time=1.5, interfaces=[Interface("eth0", True, False, "veth", None, ["10.0.0.1/24"])],
                       routes={"10.0.0.2": Route(dev="eth0"), "10.0.0.3": None},
                       ports={"29500": Proc(pid=7, cmdline="x", job_id="j"), "29501": None})
    back = roundtrip(reply)
    assert back == reply and isinstance(back.interfaces[0], Interface) and isinstance(back.ports["29500"], Proc)


def test_requests_carry_their_op() -> None:
    request = LaunchRequest(job_id="j", argv=["a"], cwd="~", workdir="~", env={"A": "1"}, secrets={"S": "v"})
    wire = to_wire(request)
    assert wire["op"] == "launch" and request_from_wire(json.loads(json.dumps(wire))) == request


def test_tuples_and_defaults() -> None:
    state = JobState(job_id="j", node="n", state=JobStatus.RUNNING, started=1.0)
    assert roundtrip(state) == state
    attempt = Attempt(target=Target("n", "a", 1, "l"), result="ok", ms=0.5)
    assert roundtrip(attempt) == attempt


def test_states_travel_and_are_kept_as_their_words_and_come_back_as_the_enum() -> None:
    state = JobState(job_id="j", node="n", state=JobStatus.STOPPED, started=1.0)
    wire = json.loads(json.dumps(to_wire(state)))
    assert wire["state"] == "stopped" and f"{state.state}" == "stopped"
    back = roundtrip(state)
    assert back.state is JobStatus.STOPPED and back.state.ended and not back.state.live
