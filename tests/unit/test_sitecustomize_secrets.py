"""trainfleet's sitecustomize reads a job's secrets only from a file of this user's that no
one else can read, and never through a link: a file another local user plants at the
guessable name in /dev/shm is ignored."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import trainfleet.agent

AGENT = Path(trainfleet.agent.__file__).parent


def seen_by_a_rank(tmp_path: Path, job_id: str) -> str | None:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    for name in ("sitecustomize.py", "rankwrap.py"):
        shutil.copy(AGENT / name, site / name)
    env = {**os.environ, "PYTHONPATH": str(site), "TRAINFLEET_JOB_DIR": str(tmp_path / "job"),
           "TRAINFLEET_JOB_ID": job_id, "TRAINFLEET_NODE": "n0"}
    env.pop("TF_PLANTED", None)
    done = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('TF_PLANTED', '-'))"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    value = done.stdout.strip()
    return None if value == "-" else value


@pytest.fixture
def planted(tmp_path: Path) -> tuple[str, Path]:
    job_id = f"tf-t-{secrets.token_hex(4)}"
    path = Path(f"/dev/shm/trainfleet-{job_id}-n0-secrets")
    yield job_id, path
    path.unlink(missing_ok=True)


def test_only_our_own_private_file_is_read(tmp_path: Path, planted: tuple[str, Path]) -> None:
    job_id, path = planted
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, json.dumps({"TF_PLANTED": "ours"}).encode())
    os.close(fd)
    assert seen_by_a_rank(tmp_path, job_id) == "ours"
    path.chmod(0o644)  # readable by others: not a file trainfleet made
    assert seen_by_a_rank(tmp_path, job_id) is None


@pytest.mark.skipif(os.geteuid() != 0, reason="planting a file as another user needs root")
def test_a_file_planted_by_another_user_or_a_link_is_ignored(tmp_path: Path, planted: tuple[str, Path]) -> None:
    job_id, path = planted
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, json.dumps({"TF_PLANTED": "LD_PRELOAD=/tmp/evil.so"}).encode())
    os.close(fd)
    os.chown(path, 65534, 65534)  # nobody's
    assert seen_by_a_rank(tmp_path, job_id) is None
    path.unlink()
    target = tmp_path / "elsewhere.json"
    target.write_text(json.dumps({"TF_PLANTED": "linked"}))
    target.chmod(0o600)
    path.symlink_to(target)
    assert seen_by_a_rank(tmp_path, job_id) is None
