"""The slow node named from where the ranks were when looked at (supervise/straggler.py)."""

from __future__ import annotations

from trainfleet.agent.protocol import JobState
from trainfleet.agent.stacks import waiting
from trainfleet.supervise.straggler import slowest


def node(name: str, **waits: tuple[int, int]) -> JobState:
    return JobState(job_id="j", node=name, state="running", started=0.0,
                    waits={rank.lstrip("r"): list(counts) for rank, counts in waits.items()})


def test_the_node_the_others_wait_for_is_named_with_its_ranks() -> None:
    states = {"node0": node("node0", r0=(12, 9), r1=(12, 8)), "node1": node("node1", r2=(12, 8), r3=(12, 9)),
              "node2": node("node2", r4=(12, 0), r5=(12, 1))}
    assert slowest(states) == "node2 (ranks 4-5) is the slowest: the others wait for it 71% of the time (it waits 4%)"


def test_nobody_is_named_when_all_wait_alike_or_too_little_is_known() -> None:
    even = {"node0": node("node0", r0=(12, 3)), "node1": node("node1", r1=(12, 4)), "node2": node("node2", r2=(12, 3))}
    assert slowest(even) is None
    early = {"node0": node("node0", r0=(7, 7)), "node1": node("node1", r1=(7, 0))}
    assert slowest(early) is None
    busy = {"node0": node("node0", r0=(12, 1)), "node1": node("node1", r1=(12, 0))}  # nobody waits: compute-bound
    assert slowest(busy) is None
    # Seen here uncapped: 3 ranks on 2 shared cores; one waited a third of the time by chance.
    noise = {"node0": node("node0", r0=(9, 3)), "node1": node("node1", r1=(9, 6)), "node2": node("node2", r2=(9, 6))}
    assert slowest(noise) is None


PY_SPY_IN_ALL_REDUCE = """\
Thread 1234 (active): "MainThread"
    all_reduce (/venv/lib/python3.11/site-packages/torch/distributed/distributed_c10d.py:2801)
    wrapper (/venv/lib/python3.11/site-packages/torch/distributed/c10d_logger.py:81)
    step (/work/train.py:31)
    <module> (/work/train.py:40)
Thread 1240 (idle): "Thread-1"
    wait (/usr/lib/python3.11/threading.py:327)
""".splitlines()

PY_SPY_COMPUTING = """\
Thread 1234 (active): "MainThread"
    forward (/work/model.py:12)
    _call_impl (/venv/lib/python3.11/site-packages/torch/nn/modules/module.py:1527)
    step (/work/train.py:29)
    <module> (/work/train.py:40)
""".splitlines()


def test_a_dump_says_whether_the_main_thread_waits_in_a_collective() -> None:
    assert waiting(PY_SPY_IN_ALL_REDUCE) is True
    assert waiting(PY_SPY_COMPUTING) is False
    assert waiting([]) is None
