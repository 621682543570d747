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

BOOTSTRAP = (
    "import sys,json,importlib.abc,importlib.util\n"
    "S=json.loads(sys.stdin.readline())\n"
    "class F(importlib.abc.MetaPathFinder,importlib.abc.Loader):\n"
    " def find_spec(self,n,p,t=None):\n"
    "  return importlib.util.spec_from_loader(n,self,is_package=n=='tfagent') if n in S else None\n"
    " def create_module(self,s): return None\n"
    " def exec_module(self,m): exec(compile(S[m.__spec__.name],'<%s>'%m.__spec__.name,'exec'),m.__dict__)\n"
    "sys.meta_path.insert(0,F())\n"
    "import tfagent; tfagent.SOURCES.update(S)\n"
)
"""Installs the agent's modules from the next stdin line (a JSON map of sources); what
follows it picks the entry point: the agent's loop, or a job's node supervisor."""


def sources() -> Dict[str, str]:
    """The agent's modules as the bootstrap installs them: `tfagent`, `tfagent.procs`, ..."""
    if not SOURCES:
        here = os.path.dirname(os.path.abspath(__file__))
        for module in sorted(name[:-3] for name in os.listdir(here) if name.endswith(".py")):
            with open(os.path.join(here, module + ".py")) as handle:
                SOURCES["tfagent" if module == "__init__" else "tfagent." + module] = handle.read()
    return SOURCES
