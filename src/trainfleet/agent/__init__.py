"""The node agent: everything trainfleet runs on a node, shipped over the SSH channel.

This package is sent whole to each node (as the package `tfagent`) and runs there with
the fleet's Python, so nothing needs installing on a node and nothing of a job (its
environment, secrets included) appears in any argv or file. Stdlib only, Python 3.8
syntax. The controller imports `protocol` from here too.
"""

import os
from typing import Dict, List

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


PENDING: List[str] = []
"""Request lines that arrived before the sources (a node without the agent cached): the
agent's loop serves them first."""

SOURCES_MARK = "AGENT "
"""Starts the stdin line that carries the sources (requests are JSON objects: never this)."""

CACHED_BOOTSTRAP = (
    "import sys,json,hashlib,os\n"
    "H=%(digest)r\n"
    "D=os.path.join(os.path.expanduser('~'),'.cache','trainfleet','agent')\n"
    "P=os.path.join(D,H+'.json')\n"
    "T=None\n"
    "try:\n"
    " with open(P,'rb') as f: B=f.read()\n"
    " if hashlib.sha256(B).hexdigest()==H: T=B.decode()\n"
    "except OSError: pass\n"
    "Q=[]\n"
    "if T is None:\n"
    " sys.stdout.write('{\"need\": \"agent\"}\\n'); sys.stdout.flush()\n"
    " for L in sys.stdin:\n"
    "  if L.startswith(%(mark)r): T=L[%(skip)d:].rstrip('\\n'); break\n"
    "  Q.append(L)\n"
    " if T is None or hashlib.sha256(T.encode()).hexdigest()!=H: sys.exit('trainfleet: the agent arrived damaged')\n"
    " try:\n"
    "  os.makedirs(D,0o700,exist_ok=True); N=P+'.'+os.urandom(6).hex()\n"
    "  with open(os.open(N,os.O_WRONLY|os.O_CREAT|os.O_EXCL,0o600),'w') as f: f.write(T)\n"
    "  os.replace(N,P)\n"
    " except OSError: pass\n"
    "S=json.loads(T)\n"
)
"""The first stage sent to a node: the agent from the node's cache when its sha256 is the
one given (a stale or altered copy never runs), else asked for (`{"need": "agent"}`), then
checked and cached. Requests sent meanwhile wait in PENDING. BOOTSTRAP's finder follows."""


def cached_bootstrap(digest: str) -> str:
    """The code a node runs first: CACHED_BOOTSTRAP, then BOOTSTRAP's finder (with S set)."""
    finder = BOOTSTRAP.split("\n", 2)[2]  # BOOTSTRAP without its imports and its stdin read
    return (CACHED_BOOTSTRAP % {"digest": digest, "mark": SOURCES_MARK, "skip": len(SOURCES_MARK)}
            + "import importlib.abc,importlib.util\n" + finder + "tfagent.PENDING[:]=Q\n")


def sources() -> Dict[str, str]:
    """The agent's modules as the bootstrap installs them: `tfagent`, `tfagent.procs`, ..."""
    if not SOURCES:
        here = os.path.dirname(os.path.abspath(__file__))
        for module in sorted(name[:-3] for name in os.listdir(here) if name.endswith(".py")):
            with open(os.path.join(here, module + ".py")) as handle:
                SOURCES["tfagent" if module == "__init__" else "tfagent." + module] = handle.read()
    return SOURCES
