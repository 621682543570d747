"""`trainfleet demo`: a 2-node sandbox for as long as the demo job runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trainfleet.fleet import load_fleet
from trainfleet.fleet.model import Fleet
from trainfleet.sandbox import cluster


@contextmanager
def demo_fleet(name: str, status: Callable[[str], None], nodes: int = 2, slots: int = 2) -> Iterator[Fleet]:
    """A sandbox of `nodes` nodes as a fleet, removed afterwards however the demo ended."""
    state = cluster.up(nodes, name=name, slots=slots)
    try:
        status(f"sandbox {name}: {nodes} nodes ({', '.join(n.address for n in state.nodes)})")
        yield load_fleet(Path(state.fleet_file))
    finally:
        cluster.down(name, missing_ok=True)
        status(f"sandbox {name} removed")
