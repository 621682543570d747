"""The node agent: everything trainfleet runs on a node, shipped over the SSH channel.

This package is sent whole to each node (as the package `tfagent`) and runs there with
the fleet's Python, so nothing needs installing on a node and nothing of a job (its
environment, secrets included) appears in any argv or file. Stdlib only, Python 3.8
syntax. The controller imports `protocol` from here too.
"""

import os
from typing import Dict

SOURCES: Dict[str, str] = {}
"""Module name -> source, as received by the bootstrap (empty when imported locally)."""

MODULES = ("__init__", "protocol", "procs", "facts", "probes", "trust", "firewall", "jobs", "main", "rankwrap")


def sources() -> Dict[str, str]:
    """The agent's modules as the bootstrap installs them: `tfagent`, `tfagent.procs`, ..."""
    if not SOURCES:
        here = os.path.dirname(os.path.abspath(__file__))
        for module in MODULES:
            with open(os.path.join(here, module + ".py")) as handle:
                SOURCES["tfagent" if module == "__init__" else "tfagent." + module] = handle.read()
    return SOURCES
