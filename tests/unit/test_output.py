"""What reaches the screen: the user's output; launcher chatter and repeated tracebacks stay in the logs."""

from __future__ import annotations

import time
from pathlib import Path

from trainfleet.supervise.output import OutputRouter

TRACEBACK = ["Traceback (most recent call last):", '  File "train.py", line 3, in <module>', "    boom()",
             "RuntimeError: Connection closed by peer"]


def router(tmp_path: Path, **options: object) -> tuple[OutputRouter, list[str]]:
    shown: list[str] = []
    return OutputRouter(tmp_path, ["node0"], shown.append, ranks_marked=True, hold=0.05, **options), shown  # type: ignore[arg-type]


def test_chatter_goes_to_the_log_only_and_verbose_shows_it(tmp_path: Path) -> None:
    lines = ["*****************************************",
             "Setting OMP_NUM_THREADS environment variable for each process to be 1 in default",
             "[tf:rank0] [W1123 10:30:33.3 socket.cpp:207] [c10d] The hostname of the client socket cannot be "
             "retrieved. err=-3",
             "[tf:rank0] step 10 loss 2.5"]
    quiet, shown = router(tmp_path / "a")
    for line in lines:
        quiet.take("node0", line)
    quiet.close()
    assert shown == ["[node0:0] step 10 loss 2.5"]
    log = (tmp_path / "a" / "node0.log").read_text()
    assert "OMP_NUM_THREADS" in log and "[node0:0] [W1123" in log
    loud, shown = router(tmp_path / "b", verbose=True)
    for line in lines:
        loud.take("node0", line)
    assert len(shown) == 4


def test_a_traceback_of_a_failing_job_stays_off_the_screen(tmp_path: Path) -> None:
    out, shown = router(tmp_path)
    for line in TRACEBACK:
        out.take("node0", f"[tf:rank1] [rank1]: {line}")
    out.job_failing()
    time.sleep(0.1)
    out.tick()
    out.close()
    assert shown == [] and (tmp_path / "node0.log").read_text().count("[node0:1]") == 4


def test_a_traceback_of_a_healthy_job_is_shown_after_a_moment(tmp_path: Path) -> None:
    out, shown = router(tmp_path)
    for line in TRACEBACK:
        out.take("node0", f"[tf:rank1] {line}")
    out.take("node0", "[tf:rank1] carrying on")
    assert shown == ["[node0:1] carrying on"]
    time.sleep(0.1)
    out.tick()
    assert shown[1:] == [f"[node0:1] {line}" for line in TRACEBACK]


def test_nothing_reaches_the_screen_after_ctrl_c(tmp_path: Path) -> None:
    out, shown = router(tmp_path)
    out.silence()
    out.take("node0", "[tf:rank0] torch.distributed.elastic.multiprocessing.api.SignalException: Process 9 got signal: 2")
    out.close()
    assert shown == [] and "SignalException" in (tmp_path / "node0.log").read_text()


def test_secret_values_are_redacted_everywhere(tmp_path: Path) -> None:
    out, shown = router(tmp_path, redact=["hunter2"])
    out.take("node0", "[tf:rank0] token=hunter2")
    out.close()
    assert shown == ["[node0:0] token=***"] and "hunter2" not in (tmp_path / "node0.log").read_text()


def test_secret_fragments_cover_each_line_of_a_multi_line_secret() -> None:
    from trainfleet.agent.rankwrap import secret_fragments

    key = "-----BEGIN KEY-----\nAAAAB3NzaC1yc2EAAAADAQAB\nshort\n-----END KEY-----\n"
    found = secret_fragments([key, "", "pw-123456"])
    assert found[0] == key and "AAAAB3NzaC1yc2EAAAADAQAB" in found and "pw-123456" in found
    assert "short" not in found  # too short to redact safely on its own
    assert found == sorted(found, key=len, reverse=True)
