"""`trainfleet exec`: one shell command on every node at once, like pdsh."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from trainfleet.fleet.model import Fleet, Node
from trainfleet.ops.sync import exec_directories
from trainfleet.results import FleetResult
from trainfleet.transport.session import FleetSession


async def exec_command(fleet: Fleet, nodes: Sequence[Node], command: str, *,
                       on_output: Callable[[str, str, str], None] | None, timeout: float | None) -> FleetResult:
    """`command` in this directory's project on each node once synced (else the workdir).

    A node with a resident agent runs it from there: the same `sh` and watchdog, in the
    environment its login shell gave (the agent steps aside when a start-up file changes),
    without a login shell to start. Any other node runs it in an SSH session, as pdsh would."""
    async with await FleetSession.open(fleet, nodes, agents="resident", wait=False) as session:
        return await session.run(command, on_output=on_output, timeout=timeout, cwd=exec_directories(fleet),
                                 resident=True)
