"""The fleet's lock on node 0, raced by real processes: exactly one of them takes it."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from trainfleet.agent.lock import lock, lock_path
from trainfleet.agent.protocol import LockRequest


def contender(workdir: str, job_id: str, start: multiprocessing.synchronize.Barrier,
              done: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    start.wait()
    results.put((job_id, lock(LockRequest(job_id=job_id, workdir=workdir)).ok))
    done.wait()  # the winner's agent stays alive until every contender has tried, as a launching agent would


def race(workdir: Path, count: int) -> list[str]:
    start, done = multiprocessing.Barrier(count), multiprocessing.Barrier(count)
    results: multiprocessing.Queue = multiprocessing.Queue()
    processes = [multiprocessing.Process(target=contender, args=(str(workdir), f"job-{i}", start, done, results))
                 for i in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    outcome = [results.get(timeout=5) for _ in processes]
    return [job for job, ok in outcome if ok]


def test_racing_clients_take_a_free_lock_once(tmp_path: Path) -> None:
    for _ in range(5):
        Path(lock_path(str(tmp_path))).unlink(missing_ok=True)
        assert len(race(tmp_path, 8)) == 1


def test_racing_clients_take_a_stale_lock_over_once(tmp_path: Path) -> None:
    path = Path(lock_path(str(tmp_path)))
    path.parent.mkdir(parents=True)
    for _ in range(5):
        path.write_text("tf-dead-job 999999 1\n")  # its agent is long gone, and no job record says it runs
        winners = race(tmp_path, 8)
        assert len(winners) == 1 and path.read_text().split()[0] == winners[0]


def test_release_removes_only_its_own_lock(tmp_path: Path) -> None:
    assert lock(LockRequest(job_id="mine", workdir=str(tmp_path))).ok
    path = Path(lock_path(str(tmp_path)))
    path.write_text(f"theirs {os.getpid()} 0\n")  # taken over by another job since
    lock(LockRequest(job_id="mine", workdir=str(tmp_path), release=True))
    assert path.read_text().startswith("theirs ")
    lock(LockRequest(job_id="theirs", workdir=str(tmp_path), release=True))
    assert not path.exists() and oct(Path(str(path) + ".guard").stat().st_mode & 0o777) == "0o600"


def writer(path: str, text: str, start: multiprocessing.synchronize.Barrier) -> None:
    from trainfleet.agent.files import write_atomically

    start.wait()
    for _ in range(50):
        write_atomically(path, text)


def test_machines_sharing_a_directory_write_one_file_at_once(tmp_path: Path) -> None:
    """Nodes on a shared file system write the same file (a runner's hostfile) at the same
    moment, and can have the same pids: every write lands whole, none fails."""
    target = tmp_path / "hostfile"
    start = multiprocessing.Barrier(6)
    writers = [multiprocessing.Process(target=writer, args=(str(target), f"node{i} slots=2\n" * 100, start))
               for i in range(6)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(60)
    assert [p.exitcode for p in writers] == [0] * 6
    assert len(set(target.read_text().splitlines())) == 1 and list(tmp_path.iterdir()) == [target]
