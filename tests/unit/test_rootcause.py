"""The root cause is the first failure in time that is not a consequence of another."""

from __future__ import annotations

from trainfleet.agent.protocol import JobStatus, ErrorRecord, JobState
from trainfleet.job.plan import RankExit
from trainfleet.supervise.rankexits import torchelastic_exits
from trainfleet.supervise.rootcause import find_root_cause


def state(node: str, outcome: str, *records: ErrorRecord, code: int = 1, ended: float = 10.0) -> JobState:
    return JobState(job_id="j", node=node, state=outcome, started=0.0, ended=ended, exit_code=code,
                    errors=list(records))


def record(node: str, rank: int, time: float, summary: str) -> ErrorRecord:
    return ErrorRecord(rank=rank, node=node, time=time, kind="exception", summary=summary,
                       traceback=f"Traceback (most recent call last):\n  ...\n{summary}\n")


def test_the_rank_that_raised_is_named_not_the_first_node_that_noticed() -> None:
    # node0's survivors failed (and node0's launcher exited) before node1 reported anything.
    states = {
        "node0": state("node0", "failed", record("node0", 0, 5.2, "RuntimeError: Connection closed by peer [x]:1"),
                       record("node0", 1, 5.1, "RuntimeError: Connection closed by peer [x]:2"), ended=5.3),
        "node1": state("node1", "failed", record("node1", 3, 5.0, "RuntimeError: deliberate failure in rank 3"),
                       ended=6.0),
    }
    exits = [RankExit("node1", 2, -15, "SIGTERM")]
    root = find_root_cause(states, exits, {}, {})
    assert root is not None
    assert root.headline() == "rank 3 on node1 failed first: RuntimeError: deliberate failure in rank 3"
    assert "deliberate failure" in root.first.detail
    assert root.others_line() == ("3 other ranks failed after it: connection closed by peer; stopped by its launcher "
                                  "(node0: rank 0,1; node1: rank 2)")


def test_a_consequence_recorded_earlier_than_the_cause_still_loses() -> None:
    """Clocks of two machines differ a little: a lost-peer error can carry an earlier time."""
    states = {"node0": state("node0", "failed", record("node0", 0, 4.9, "RuntimeError: Connection reset by peer")),
              "node1": state("node1", "failed", record("node1", 2, 5.0, "ValueError: bad batch"))}
    root = find_root_cause(states, [], {}, {})
    assert root is not None and (root.first.node, root.first.rank) == ("node1", 2)


def test_a_rank_killed_by_a_signal_says_which() -> None:
    states = {"node0": state("node0", "failed"), "node1": state("node1", "failed")}
    exits = [RankExit("node1", 3, -9, "SIGKILL"), RankExit("node1", 2, -15, "SIGTERM")]
    root = find_root_cause(states, exits, {("node1", 3): ["step 10", "step 11"]}, {})
    assert root is not None
    assert root.headline() == "rank 3 on node1 failed first: killed by SIGKILL"
    assert root.first.signal == "SIGKILL" and root.first.detail == "step 10\nstep 11"


def test_a_launcher_that_failed_without_any_rank_is_named_with_its_output() -> None:
    states = {"node0": state("node0", "succeeded", code=0),
              "node1": state("node1", "failed", code=1, ended=3.0)}
    root = find_root_cause(states, [], {}, {"node1": ["torchrun: error: unrecognized arguments: --bogus"]})
    assert root is not None and root.first.who == "node node1"
    assert "unrecognized arguments" in root.first.detail and root.others_line() is None
    both = find_root_cause({"node0": state("node0", "failed", ended=2.0), "node1": state("node1", "failed", ended=3.0)},
                           [], {}, {})
    assert both is not None and both.others_line() == "1 other node failed after it: exited with status 1 (node1)"


def test_nothing_failed() -> None:
    assert find_root_cause({"node0": state("node0", "succeeded", code=0)}, [], {}, {}) is None


def test_failures_before_an_elastic_restart_are_history() -> None:
    """After a lost node, torchrun restarted the ranks and the job finished: no root cause."""
    before = record("node0", 0, 5.0, "RuntimeError: Connection closed by peer")
    done = {"node0": state("node0", "succeeded", before, code=0), "node1": state("node1", "succeeded", code=0)}
    assert find_root_cause(done, [], {}, {}, lost={"node2": "node2 was lost (its connection closed)"}) is None
    later = ErrorRecord(rank=1, node="node1", time=9.0, kind="exception", summary="ValueError: bad", traceback="",
                        attempt=1)
    failed = {"node0": state("node0", "failed", before), "node1": state("node1", "failed", later)}
    root = find_root_cause(failed, [], {}, {})
    assert root is not None and root.first.rank == 1 and root.others == ()


def test_a_lost_node_is_the_root_cause_of_what_followed() -> None:
    states = {"node0": state("node0", "stopped", record("node0", 0, 5.0, "RuntimeError: Connection closed by peer")),
              "node1": state("node1", "stopped")}
    root = find_root_cause(states, [], {}, {}, lost={"node2": "node2 was lost (no heartbeat for 3s)"})
    assert root is not None and root.headline() == "node2 was lost (no heartbeat for 3s)"


def test_a_hang_names_where_each_node_waited() -> None:
    hung = JobState(job_id="j", node="node0", state=JobStatus.STOPPED, started=0.0, reason="hung: no rank wrote anything for 5s",
                    hang="ranks 0,1 in all_reduce (ranks.py:38)")
    other = JobState(job_id="j", node="node1", state=JobStatus.STOPPED, started=0.0, reason="hung: no rank wrote anything for 5s",
                     hang="rank 3 in main (ranks.py:52)")
    root = find_root_cause({"node0": hung, "node1": other}, [], {}, {})
    assert root is not None and root.headline() == "hung: no rank wrote anything for 5s"
    assert root.first.detail == "node0: ranks 0,1 in all_reduce (ranks.py:38)\nnode1: rank 3 in main (ranks.py:52)"


def test_torchruns_failure_report_is_read() -> None:
    lines = """[node0] Failures:
[node0] [1]:
[node0]   time      : 2026-11-23_10:30:37
[node0]   host      : t1305-node0
[node0]   rank      : 0 (local_rank: 0)
[node0]   exitcode  : -15 (pid: 5887)  (SIGTERM)
[node0] ------------------------------------------------------
[node0] Root Cause (first observed failure):
[node0] [0]:
[node0]   time      : 2026-11-23_10:30:36
[node0]   rank      : 1 (local_rank: 1)
[node0]   exitcode  : -6 (pid: 5888)  (SIGABRT)
[node0] ======================================================""".replace("[node0] ", "").splitlines()
    exits = {e.rank: e for e in torchelastic_exits("node0", lines)}
    assert exits[0].signal == "SIGTERM" and exits[1].signal == "SIGABRT" and exits[1].exit_code == -6


def test_a_full_disk_is_the_cause_not_the_rank_that_could_not_write() -> None:
    import time

    full = state("node1", "failed", record("node1", 1, 5.1, "OSError: [Errno 28] No space left on device"))
    full.disk_full, full.disk_full_path = 5.0, "/data/trainfleet"
    states = {"node0": state("node0", "failed", record("node0", 0, 5.3, "RuntimeError: Connection closed by peer")),
              "node1": full}
    root = find_root_cause(states, [], {("node1", 1): ["OSError: [Errno 28] No space left on device"]}, {})
    assert root is not None
    at = time.strftime("%H:%M:%S", time.localtime(5.0))
    assert root.headline() == (f"node1: no space left on device in /data/trainfleet at {at}; rank 1 failed after it; "
                               "fix: free space there (`trainfleet doctor` shows what is free where)")
    assert "Errno 28" in root.first.detail


def test_a_gpu_that_failed_under_the_ranks_is_the_cause_not_their_errors() -> None:
    import time

    from trainfleet.agent.protocol import XidEvent

    sick = state("node1", "failed", record("node1", 3, 5.2, "RuntimeError: CUDA error: unspecified launch failure"))
    sick.gpu_faults = [XidEvent(xid=79, bus_id="0000:4e:00", text="NVRM: Xid (PCI:0000:4e:00): 79, pid=1, GPU has "
                                "fallen off the bus.", when="1234.5", at=5.0, gpu="1 GPU-abc")]
    states = {"node0": state("node0", "failed", record("node0", 0, 5.1, "torch.distributed.DistBackendError: NCCL "
                                                                       "watchdog timeout")), "node1": sick}
    root = find_root_cause(states, [], {}, {})
    assert root is not None
    at = time.strftime("%H:%M:%S", time.localtime(5.0))
    assert root.headline() == (f"node1 GPU 1 (GPU-abc, bus 0000:4e:00): Xid 79, fallen off the bus at {at}; rank 3 "
                               f"failed after it; fix: `trainfleet doctor` on node1, then reset the GPU or "
                               f"`trainfleet cordon node1` and resume elsewhere")
    assert "GPU has fallen off the bus" in root.first.detail
    # An application Xid never reaches the job's record (the node keeps hardware ones only): ranks as before.
    sick.gpu_faults = []
    assert find_root_cause(states, [], {}, {}).first.who == "rank 0 on node0"  # type: ignore[union-attr]


CAPTURES = __import__("pathlib").Path(__file__).resolve().parents[1] / "captures"


def test_nccls_own_warning_names_the_link_every_rank_failed_over() -> None:
    """Every rank ends with an NCCL error that names no culprit; the first NCCL WARN line, on
    node1, names the transport and the peer: that is the cause, whatever order the ranks'
    exceptions were recorded in."""
    import time

    from trainfleet.agent import nccl
    from trainfleet.agent.protocol import NcclLine

    lines = (CAPTURES / "nccl-ib-failure.log").read_text().splitlines()
    said = [nccl.problem(line) for line in lines]
    assert said[0] is not None and said[0].startswith("NCCL WARN NET/IB : Got completion from peer 10.0.0.12<51234> "
                                                      "with status=12")
    assert said[1:4] == [None, None, None]  # NCCL INFO lines: the unwinding, not news
    assert said[5] == "NCCL watchdog: collective ALLREDUCE (sequence number 4811) timed out"
    assert (nccl.peer(lines[0]), nccl.transport(lines[0])) == ("10.0.0.12", "NET/IB")
    assert nccl.peer(lines[4]) == "10.0.0.11" and nccl.transport(lines[5]) == ""

    node0 = state("node0", "failed", record("node0", 0, 5.0, "torch.distributed.DistBackendError: NCCL error in: "
                                                             "ProcessGroupNCCL.cpp:1970, remote process exited or "
                                                             "there was a network error"))
    node0.nccl = [NcclLine(at=4.9, rank=1, text=str(said[4]))]
    node1 = state("node1", "failed", record("node1", 3, 5.3, "torch.distributed.DistBackendError: NCCL error in: "
                                                             "ProcessGroupNCCL.cpp:1970, unhandled system error"))
    node1.nccl = [NcclLine(at=4.2, rank=3, text=str(said[0]))]
    root = find_root_cause({"node0": node0, "node1": node1}, [], {}, {})
    assert root is not None and root.first.who == "rank 3 on node1"
    at = time.strftime("%H:%M:%S", time.localtime(4.2))
    assert root.headline().startswith("rank 3 on node1 failed first: NCCL WARN NET/IB : Got completion from peer "
                                      "10.0.0.12<51234> with status=12")
    assert root.headline().endswith(f"(NCCL's first word of the failure, at {at}, over NET/IB, peer 10.0.0.12); fix: "
                                    "`trainfleet doctor` on node1 and on the node at 10.0.0.12 (GPUs, NICs, InfiniBand "
                                    "ports); `trainfleet bench net` measures the links")
    assert root.others_line() == ("2 other ranks failed after it: NCCL system error; NCCL: a peer exited or the network "
                                  "failed (node0: rank 0; node1: rank 3)")
    # A bug of the script's own that came first is still the cause: NCCL's words followed from it.
    node0.errors = [record("node0", 0, 4.0, "ValueError: bad batch")]
    assert find_root_cause({"node0": node0, "node1": node1}, [], {}, {}).first.summary == "ValueError: bad batch"  # type: ignore[union-attr]


def test_a_hang_that_followed_a_hardware_xid_is_named_by_the_gpu() -> None:
    """A GPU that fell off the bus often leaves its ranks waiting forever rather than failing:
    the hang is ended, and the GPU is its cause."""
    from trainfleet.agent.protocol import XidEvent

    sick = state("node1", "failed")
    sick.reason, sick.hang = "hung: no rank wrote anything for 600s", "rank 3 in all_reduce (train.py:51)"
    sick.gpu_faults = [XidEvent(xid=79, bus_id="0000:4e:00", text="NVRM: Xid (PCI:0000:4e:00): 79, GPU has fallen "
                                "off the bus.", at=5.0, gpu="1 GPU-abc")]
    quiet = state("node0", "failed")
    quiet.reason, quiet.hang = sick.reason, "rank 0 in all_reduce (train.py:51)"
    root = find_root_cause({"node0": quiet, "node1": sick}, [], {}, {})
    assert root is not None and root.headline().startswith("node1 GPU 1 (GPU-abc, bus 0000:4e:00): Xid 79, fallen off "
                                                           "the bus at ")
    sick.gpu_faults = []
    assert find_root_cause({"node0": quiet, "node1": sick}, [], {}, {}).headline().startswith("hung")  # type: ignore[union-attr]
