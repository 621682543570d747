"""`trainfleet firewall plan | apply | revoke` over one connection per node."""

from __future__ import annotations

from dataclasses import dataclass

from trainfleet.agent.protocol import FactSection, FirewallReply, FirewallRequest
from trainfleet.plans.firewall import NodeFirewall, fleet_tag, plan_firewall, steps
from trainfleet.fleet.model import Fleet
from trainfleet.plans.network import choose
from trainfleet.ops.common import facts_request
from trainfleet.results import FleetError
from trainfleet.transport.session import FleetSession


@dataclass(frozen=True)
class FirewallOutcome:
    replies: dict[str, FirewallReply]
    error: FleetError | None


async def _plan(session: FleetSession, port: int) -> tuple[NodeFirewall, ...]:
    fleet = session.fleet
    replies = await session.call_all(facts_request(fleet, [FactSection.NET]), timeout=30)
    replies.require("cannot plan the firewall", fleet)
    choices = choose(fleet, replies.answers)
    ranges = {n: (a.port_range[0], a.port_range[1]) for n, a in replies.answers.items() if a.port_range}
    return plan_firewall(fleet, {n: c.address for n, c in choices.items()}, ranges, port)


async def plan(fleet: Fleet, port: int) -> tuple[NodeFirewall, ...]:
    async with await FleetSession.open(fleet) as session:
        session.unreachable.require("cannot plan the firewall", fleet)
        return await _plan(session, port)


async def apply(fleet: Fleet, port: int) -> FirewallOutcome:
    async with await FleetSession.open(fleet) as session:
        session.unreachable.require("cannot apply the firewall rules", fleet)
        return await apply_in(session, port)


async def apply_in(session: FleetSession, port: int, what: str = "firewall apply failed") -> FirewallOutcome:
    """The plan's rules and the closing chain on every node of an open session."""
    fleet = session.fleet
    tag = fleet_tag(fleet)
    plans = {p.node: p for p in await _plan(session, port)}
    replies = await session.call_all(
        lambda n: FirewallRequest(action="apply", tag=tag, steps=steps(plans[n.name], tag)), timeout=120)
    error = FleetError(what, replies, fleet) if replies.failures else None
    return FirewallOutcome(replies=replies.answers, error=error)


async def revoke(fleet: Fleet) -> FirewallOutcome:
    async with await FleetSession.open(fleet) as session:
        replies = await session.call_all(FirewallRequest(action="revoke", tag=fleet_tag(fleet)), timeout=120)
    error = FleetError("firewall revoke failed", replies, fleet) if replies.failures else None
    return FirewallOutcome(replies=replies.answers, error=error)
