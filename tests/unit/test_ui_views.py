"""The dashboard's data, from what the fleet answered: pure, so checked here exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainfleet.agent.protocol import JobStatus, JobState, TopGpu, TopJob, TopReply
from trainfleet.agent.rankwrap import rank_mark
from trainfleet.fleet.model import Fleet
from trainfleet.fleet.schema import FleetModel, resolve
from trainfleet.ops.jobs import JobView
from trainfleet.ui.views import JobOutput, fleet_view, heatmap, job_row, timeline


def fleet() -> Fleet:
    model = FleetModel.model_validate({"nodes": [{"name": f"n{i}", "host": f"10.0.0.{i}"} for i in range(3)]})
    return resolve(model, "fleet.yaml", Path("."), check_keys=False)


P2P = [{"src": a, "dst": b, "gbit_s": 1.0 + i, "bytes": 1 << 20}
       for i, (a, b) in enumerate((a, b) for a in ("n0", "n1", "n2") for b in ("n0", "n1", "n2") if a != b)]


def test_the_heatmap_is_n_by_n_and_names_the_slowest_link() -> None:
    heat = heatmap({"p2p": P2P}, saved=5.0)
    assert heat is not None
    assert heat["nodes"] == ["n0", "n1", "n2"]
    assert heat["cells"] == [[None, 1.0, 2.0], [3.0, None, 4.0], [5.0, 6.0, None]]
    assert heat["slowest"] == {"src": "n0", "dst": "n1", "gbit_s": 1.0}
    assert heatmap({"p2p": []}, saved=5.0) is None


def test_the_fleet_view_marks_unreachable_nodes_and_keeps_only_findings_that_need_a_fix() -> None:
    answers = {"n0": TopReply(cpu_percent=12.34, memory_used=1, memory_total=2,
                              gpus=[TopGpu(index="0", util=50.0, memory_used=3.0, memory_total=4.0)],
                              jobs=[TopJob(job_id="j", processes=2, cpu_percent=1.0, rss_bytes=1, steps_per_s=2.5)]),
               "n1": TopReply(cpu_percent=0.0, memory_used=1, memory_total=2)}
    doctor = {"saved": 1.0, "data": {"ok": False, "network": {"n0": {"interface": "ib0", "address": "192.168.0.1"}},
                                     "findings": [{"check": "ssh", "verdict": "ok"},
                                                  {"check": "port", "verdict": "fail", "remedy": "open it"}]}}
    view = fleet_view(fleet(), answers, {"n2": "connection refused"}, 7.0, doctor, {"saved": 2.0, "data": {"p2p": P2P}})
    rows = {r["name"]: r for r in view["nodes"]}
    assert [r["reachable"] for r in view["nodes"]] == [True, True, False]
    assert rows["n2"]["error"] == "connection refused" and "cpu_percent" not in rows["n2"]
    assert rows["n0"]["cpu_percent"] == 12.3 and rows["n0"]["gpus"][0]["util"] == 50.0
    assert rows["n0"]["jobs"] == [{"job_id": "j", "processes": 2, "steps_per_s": 2.5}]
    assert rows["n0"]["network"] == {"interface": "ib0", "address": "192.168.0.1"}
    assert view["doctor"]["items"] == [{"check": "port", "verdict": "fail", "remedy": "open it"}]
    assert view["heatmap"]["slowest"]["src"] == "n0"
    assert fleet_view(fleet(), {}, {}, 0.0, None, None)["doctor"] is None


def test_output_keeps_the_users_lines_and_reads_metrics_per_rank() -> None:
    output = JobOutput(marked=True, rank_nodes=["n0", "n0", "n1"])
    output.take("n0", 0.5, "[rank 0] step 10 loss 2.5")  # unmarked in a marked job: the launcher's
    output.take("n0", 1.0, rank_mark(0) + "step 10 loss 2.5 tokens/s 100")
    output.take("n1", 2.0, rank_mark(2) + "{'loss': 1.5, 'learning_rate': 5e-05, 'epoch': 0.5}")
    output.take("n1", 3.0, rank_mark(2) + "hello")
    output.take("n1", 4.0, rank_mark(2) + "{'loss': 1.25, 'learning_rate': 4e-05, 'epoch': 0.6}")
    assert output.lines == [[1.0, "n0", 0, "step 10 loss 2.5 tokens/s 100"],
                            [2.0, "n1", 2, "{'loss': 1.5, 'learning_rate': 5e-05, 'epoch': 0.5}"],
                            [3.0, "n1", 2, "hello"],
                            [4.0, "n1", 2, "{'loss': 1.25, 'learning_rate': 4e-05, 'epoch': 0.6}"]]
    # The step as printed, else the count of the rank's metric lines.
    assert output.points == [["n0", 0, 10.0, {"loss": 2.5, "tokens/s": 100.0}],
                             ["n1", 2, 1.0, {"loss": 1.5, "learning_rate": 5e-05, "epoch": 0.5}],
                             ["n1", 2, 2.0, {"loss": 1.25, "learning_rate": 4e-05, "epoch": 0.6}]]


def test_the_timeline_orders_a_failed_jobs_events_and_ends_with_its_root_cause() -> None:
    view = JobView("j", nodes={
        "n0": JobState(job_id="j", node="n0", state=JobStatus.FAILED, started=10.0, ended=20.0, exit_code=1, launcher="torchrun",
                       nproc=2),
        "n1": JobState(job_id="j", node="n1", state=JobStatus.FAILED, started=10.5, ended=19.0, exit_code=1, launcher="torchrun",
                       nproc=2, hang="rank 2 in all_reduce\n  File train.py, line 9"),
    })
    events = timeline(view)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    assert events[0]["text"] == "started on n0, n1"
    assert {"time": 19.0, "node": "n1", "text": "hung: rank 2 in all_reduce"} in events
    assert {"time": 20.0, "node": "n0", "text": "failed (exit 1)"} in events
    assert events[-1]["time"] == 20.0 and events[-1]["node"] in ("n0", "n1")
    row = job_row(view)
    assert (row["launcher"], row["processes"], row["state"]) == ("torchrun", 4, "failed")


def test_the_timeline_shows_a_restart_the_spare_that_took_the_place_and_a_closed_controller_link() -> None:
    from trainfleet.agent.protocol import Restart

    restart = Restart(at=30.0, lost="n1", cause="n1 was lost (its connection closed)", nodes=["n0", "n2"],
                      resumed=34.5)
    view = JobView("j", nodes={
        "n0": JobState(job_id="j", node="n0", state=JobStatus.SUCCEEDED, started=10.0, ended=90.0, exit_code=0,
                       lost=["n1"], restarts=[restart], controller_gone=50.0),
        "n2": JobState(job_id="j", node="n2", state=JobStatus.SUCCEEDED, started=10.0, ended=90.0, exit_code=0,
                       lost=["n1"], spare="joined"),
    })
    events = timeline(view)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    assert {"time": 30.0, "node": "n1",
            "text": "restart 1: n1 was lost (its connection closed); went on with n0, n2"} in events
    assert {"time": 34.5, "node": "", "text": "restart 1: ranks back 4.5 s later"} in events
    assert {"time": 30.0, "node": "n2", "text": "spare: took a lost node's place"} in events
    assert {"time": 50.0, "node": "n0", "text": "the controller's link closed: the job went on"} in events
    assert not any(e["text"].startswith("lost") for e in events)  # the restart says it
    row = job_row(view)
    assert row["spares"] == {"n2": "joined"} and row["restarts"][0]["resumed"] == 34.5


def test_a_long_jobs_output_is_kept_bounded_and_positions_still_count_from_its_start(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from trainfleet.ui import views

    monkeypatch.setattr(views, "KEEP_LINES", 100)
    monkeypatch.setattr(views, "KEEP_POINTS", 50)
    output = JobOutput(marked=True)
    for step in range(1, 1001):
        output.take("n0", float(step), f"[tf:rank0] step {step} loss {1 / step:.5f}")
    assert output.line_count == 1000 and output.point_count == 1000
    assert len(output.lines) <= 120 and len(output.points) <= 60
    # A page that has all but the last 10 lines gets exactly those; one far behind, the oldest kept.
    lines, points, at_line, at_point = output.after(990, 995, 500)
    assert [line[3] for line in lines] == [f"step {s} loss {1 / s:.5f}" for s in range(991, 1001)]
    assert len(points) == 5 and (at_line, at_point) == (1000, 1000)
    lines, _, at_line, _ = output.after(0, 0, 500)
    assert lines[0] == output.lines[0] and at_line == 1000
