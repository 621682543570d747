"""The fleet: its model (plain values), the fleet file's schema, loading, and importers."""

from trainfleet.fleet.load import fleet_path, load_fleet
from trainfleet.fleet.model import Fleet, Jump, Node, SSHSettings

__all__ = ["Fleet", "Jump", "Node", "SSHSettings", "fleet_path", "load_fleet"]
