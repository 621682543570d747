"""A launcher-neutral job: plain frozen data that the CLI builds and launchers read."""

from __future__ import annotations

import datetime as _dt
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from trainfleet.errors import UsageError

JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class JobSpec:
    entrypoint: str
    """A script path (relative to the job's directory on the nodes), a module with
    `module`, or the command line of the `command`/`head` launchers."""
    args: tuple[str, ...] = ()
    module: bool = False
    job_id: str = ""
    launcher: str = "torchrun"
    nproc_per_node: int | None = None
    """Processes per node; each node's `slots` when None."""
    max_restarts: int = 0
    env: Mapping[str, str] = field(default_factory=dict)
    """Variables for this job only (`--env K=V`), on top of the fleet's `env`."""
    launcher_args: tuple[str, ...] = ()
    """Extra options passed to the launcher itself, before the entrypoint."""
    options: Mapping[str, str | int] = field(default_factory=dict)
    """Options of the chosen launcher, by name (`include` for `--include`): each
    launcher declares and checks its own."""
    hang_timeout: float = 0.0
    """Seconds without a line from any rank before the ranks' stacks are dumped and the job ends (0: never)."""
    rendezvous_id: str = ""
    """The id the job's nodes meet under (torchrun's --rdzv-id): the job id and 64 random
    bits, so that it cannot be guessed from the short id shown; "": the job id."""
    loss_timeout: float = 15.0
    """Seconds a node may be silent (a network blip, a saturated link) before it counts as
    lost and the job ends (or goes on without it); a node whose supervisor died is lost at once."""


def new_job_id(now: _dt.datetime | None = None) -> str:
    moment = now or _dt.datetime.now()
    return f"tf-{moment:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def new_rendezvous_id(job_id: str) -> str:
    return f"{job_id}-{secrets.token_hex(8)}"


def validate_job(job: JobSpec) -> None:
    if not JOB_ID_PATTERN.match(job.job_id):
        raise UsageError(f"job id {job.job_id!r} is not usable",
                         fix="use letters, digits, '.', '_' and '-' (it names log directories)")
    if job.nproc_per_node is not None and job.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be >= 1 (got {job.nproc_per_node})")
    if job.max_restarts < 0:
        raise UsageError(f"--max-restarts must be >= 0 (got {job.max_restarts})")
    if job.hang_timeout < 0:
        raise UsageError("--hang-timeout cannot be negative")
    if job.loss_timeout < 2:
        raise UsageError(f"--loss-timeout must be at least 2 seconds (got {job.loss_timeout:g}): heartbeats come "
                         f"every second")
    for name in job.env:
        if not ENV_NAME.match(name):
            raise UsageError(f"--env {name}=...: {name!r} is not a valid environment variable name")
