"""The keeper of a job's secrets on a node where another node's runner starts the ranks
(`--launcher head`, mpirun): no supervisor of ours runs there, so a process of its own
removes the node's in-memory secrets file once the job has no process left on the node,
however the job ended (finished, stopped, detached, the controller killed)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from . import procs
from .records import remove_secrets


KEEPER_FIRST_WAIT = 900.0
"""Seconds the job's first process may take to appear on a prepared node (a runner that
builds kernels first) before its secrets are taken back anyway."""
KEEPER_GONE = 5.0
"""Seconds without any process of the job before it counts as ended on this node."""

_KEEPER_ENTRY = "import tfagent.secrets_keeper as j; a=json.loads(sys.stdin.readline()); j.keep_secrets(a['job_id'])\n"


def start_keeper(job_id: str) -> None:
    """A process of its own that removes the job's secrets from this node once the job has
    no process left here, however it ended (finished, stopped, detached, the controller
    killed): another node's runner starts this node's ranks, so no supervisor of ours runs here."""
    from . import BOOTSTRAP, sources

    keeper = subprocess.Popen([sys.executable, "-c", BOOTSTRAP + _KEEPER_ENTRY], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert keeper.stdin is not None
    keeper.stdin.write((json.dumps(sources()) + "\n" + json.dumps({"job_id": job_id}) + "\n").encode())
    keeper.stdin.close()


def keep_secrets(job_id: str, poll: float = 1.0) -> None:
    started = time.monotonic()
    seen = None
    while True:
        if procs.job_processes(job_id):
            seen = time.monotonic()
        elif seen is not None and time.monotonic() - seen > KEEPER_GONE:
            break
        elif seen is None and time.monotonic() - started > KEEPER_FIRST_WAIT:
            break
        time.sleep(poll)
    remove_secrets(job_id)
