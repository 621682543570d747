"""What several operations ask of the nodes the same way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from trainfleet.agent.protocol import FactsRequest, WriteRequest
from trainfleet.errors import FleetError, TrainfleetError
from trainfleet.fleet.model import Fleet
from trainfleet.netchoice import route_peers
from trainfleet.results import FleetResult, NodeResult, fold_nodes


def facts_request(fleet: Fleet, sections: Iterable[str], *, ports: Iterable[int] = (),
                  port_address: str | None = None, files: Iterable[str] = (), project: str = "") -> FactsRequest:
    from trainfleet.containers import data_root

    container = fleet.container
    return FactsRequest(sections=list(sections), python=fleet.python, workdir=fleet.workdir,
                        peers=route_peers(fleet), ports=list(ports), port_address=port_address, files=list(files),
                        project=project, container_engine=container.engine if container else "",
                        container_root=data_root(container) if container else "")


PYTHON_FIX = ("set `python:` in the fleet file to the full path of the Python with torch on the nodes "
              "(`trainfleet doctor` looks for it in login shells too)")


def require_ok(fleet: Fleet, failures: Mapping[str, NodeResult], what: str) -> None:
    """Nothing failed, or one error naming the nodes, the cause and a fix."""
    if not failures:
        return
    missing = [r.node for r in failures.values() if r.exit_status == 127]
    if missing and len(missing) == len(failures):
        raise TrainfleetError(f"{what}: `{fleet.python}` (the fleet's `python:`) was not found on "
                              f"{fold_nodes(missing)} by a non-interactive SSH shell", fix=PYTHON_FIX)
    full = [r.node for r in failures.values() if "No space left on device" in f"{r.error} {r.stderr}"]
    fix = (f"free space on {fold_nodes(full)} (the workdir is {fleet.workdir}); `trainfleet doctor` shows what is "
           f"free where" if full else None)
    raise FleetError(what, FleetResult(tuple(failures.values())), fix=fix)


def node_results(results: Iterable[NodeResult]) -> dict[str, NodeResult]:
    return {r.node: r for r in results}


async def write_files(fleet: Fleet, files: Mapping[str, str], what: str) -> None:
    """Each path (absolute, or ~/) written with its text on every node, atomically."""
    from trainfleet.transport.session import FleetSession

    async with await FleetSession.open(fleet) as session:
        require_ok(fleet, session.failures, what)
        replies = await session.call_all(WriteRequest(files=dict(files)), timeout=30)
        require_ok(fleet, replies.failures, what)
