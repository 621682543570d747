"""The fleet written as the hostfiles other tools read (DeepSpeed, Open MPI, Slurm).

Node names are written, not addresses: they resolve for ssh and pdsh once `trainfleet
ssh setup` has written the nodes' aliases.
"""

from __future__ import annotations

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet

FORMATS = ("deepspeed", "mpi", "slurm")


def render_hostfile(fleet: Fleet, form: str, slots: int | None = None) -> str:
    """deepspeed and mpi: `name slots=N` (Open MPI reads DeepSpeed's form); slurm: one
    line per task, as SLURM_HOSTFILE takes it."""
    lines = []
    for node in fleet.nodes:
        count = slots or node.slots
        if form in ("deepspeed", "mpi"):
            lines.append(f"{node.name} slots={count}")
        elif form == "slurm":
            lines += [node.name] * count
        else:
            raise UsageError(f"unknown hostfile format {form!r}", fix=f"use one of: {', '.join(FORMATS)}")
    return "\n".join(lines) + "\n"
