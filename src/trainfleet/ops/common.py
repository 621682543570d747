"""What several operations ask of the nodes the same way."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from trainfleet.agent.protocol import FactSection, FactsRequest, WriteRequest
from trainfleet.fleet.model import Fleet
from trainfleet.plans.network import route_peers


def facts_request(fleet: Fleet, sections: Iterable[FactSection], *, ports: Iterable[int] = (),
                  port_address: str | None = None, files: Iterable[str] = (), project: str = "") -> FactsRequest:
    from trainfleet.plans.containers import data_root

    container = fleet.container
    return FactsRequest(sections=list(sections), python=fleet.python, workdir=fleet.workdir,
                        peers=route_peers(fleet), ports=list(ports), port_address=port_address, files=list(files),
                        project=project, container_engine=container.engine if container else "",
                        container_root=data_root(container) if container else "")


async def write_files(fleet: Fleet, files: Mapping[str, str], what: str) -> None:
    """Each path (absolute, or ~/) written with its text on every node, atomically."""
    from trainfleet.transport.session import FleetSession

    async with await FleetSession.open(fleet) as session:
        session.unreachable.require(what, fleet)
        replies = await session.call_all(WriteRequest(files=dict(files)), timeout=30)
        replies.require(what, fleet)
