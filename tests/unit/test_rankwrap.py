"""The rank wrapper, run for real: the user's script unchanged, its lines marked with the
rank, its first exception recorded, and a clean exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trainfleet.agent import rankwrap

WRAPPER = rankwrap.__file__
RANK_PYTHON = os.environ.get("TRAINFLEET_TEST_RANK_PYTHON", sys.executable)
"""The Python a rank runs on (with torch): this one, unless the tests run under another
controller Python (tests/cluster/test_pythons.py), when it is the nodes' Python."""


def run(tmp_path: Path, script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # This node's records, as a node supervisor makes them.
    (tmp_path / "nodes" / "k1" / "errors").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "user.py"
    path.write_text(script)
    environ = {**os.environ, "TRAINFLEET_JOB_DIR": str(tmp_path), "RANK": "3", "TRAINFLEET_NODE": "node1",
               "TRAINFLEET_NODE_KEY": "k1", **(env or {})}
    launcher_first = [a for a in args if a.startswith("--local_rank=")]  # where DeepSpeed puts it
    rest = [a for a in args if a not in launcher_first]
    return subprocess.run([RANK_PYTHON, "-u", WRAPPER, *launcher_first, str(path), *rest], capture_output=True,
                          text=True, env=environ, timeout=120)


def test_the_script_sees_its_own_argv_and_every_line_is_marked(tmp_path: Path) -> None:
    done = run(tmp_path, "import sys, os\nprint(sys.argv)\nprint(__name__, file=sys.stderr)\n"
                         "os.write(1, b'raw fd write\\n')\n", "--local_rank=0", "--steps", "5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"[tf:rank3] {[str(tmp_path / 'user.py'), '--local_rank=0', '--steps', '5']}",
                                        "[tf:rank3] __main__", "[tf:rank3] raw fd write"]
    assert done.stderr == "" and not list((tmp_path / "nodes" / "k1" / "errors").iterdir())


def test_the_first_exception_is_recorded_with_its_time_and_secrets_redacted(tmp_path: Path) -> None:
    done = run(tmp_path, "import os\ndef f():\n    raise ValueError('token ' + os.environ['TOKEN'])\nf()\n",
               env={"TOKEN": "s3cr3t-v4lue", "TRAINFLEET_SECRET_NAMES": "TOKEN"})
    assert done.returncode == 1
    assert "[tf:rank3] ValueError: token s3cr3t-v4lue" in done.stdout  # the live stream; the supervisor redacts it
    record = json.loads((tmp_path / "nodes" / "k1" / "errors" / "rank-3-attempt-0.json").read_text())
    assert record["summary"] == "ValueError: token ***" and record["rank"] == 3 and record["node"] == "node1"
    assert "s3cr3t" not in record["traceback"] and 'user.py", line 3, in f' in record["traceback"]
    assert "rankwrap" not in record["traceback"] and "runpy" not in record["traceback"]


def test_a_non_zero_exit_is_recorded(tmp_path: Path) -> None:
    done = run(tmp_path, "import sys\nsys.exit(3)\n")
    assert done.returncode == 3
    assert json.loads((tmp_path / "nodes" / "k1" / "errors" / "rank-3-attempt-0.json").read_text())["kind"] == "exit"


def test_a_finished_rank_leaves_cleanly_after_threads_atexit_and_unclosed_files(tmp_path: Path) -> None:
    """With torch loaded the wrapper skips the interpreter's C++ teardown; nothing the
    script expects from a normal exit may be lost by that."""
    script = f"""
import atexit, threading, time, torch
out = open({str(tmp_path / 'unclosed.txt')!r}, 'w')
out.write('kept')
def late():
    time.sleep(0.3)
    open({str(tmp_path / 'thread.txt')!r}, 'w').write('joined')
threading.Thread(target=late).start()
atexit.register(lambda: open({str(tmp_path / 'atexit.txt')!r}, 'w').write('ran'))
"""
    done = run(tmp_path, script)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "unclosed.txt").read_text() == "kept"
    assert (tmp_path / "thread.txt").read_text() == "joined" and (tmp_path / "atexit.txt").read_text() == "ran"


def test_the_signal_that_killed_a_rank_is_read_even_while_it_is_still_dying() -> None:
    """The reader sees the rank's pipes close before the rank is a zombie: asked at once,
    it waits for that state rather than answering "not killed" (which lost the cause of a
    SIGKILLed rank now and then)."""
    for _ in range(20):
        victim = subprocess.Popen(["sleep", "30"])
        try:
            os.kill(victim.pid, 9)
            assert rankwrap.exit_signal(victim.pid) == "SIGKILL"  # not yet reaped: Popen has not waited
        finally:
            victim.wait()
        done = subprocess.Popen(["true"])
        assert rankwrap.exit_signal(done.pid) is None  # exited on its own (a zombie, or still exiting)
        done.wait()
        assert rankwrap.exit_signal(done.pid) is None  # reaped: gone
