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

_IMPORTS = (
    # Only what loads fast: importlib.abc and hashlib would cost most of a bare Python's
    # start again (importlib.resources; OpenSSL), on every node, for every Python started.
    "import sys,json,marshal,os,importlib.machinery as M\n"
    "try: from _sha256 import sha256\n"
    "except ImportError:\n"
    " try: from _sha2 import sha256\n"
    " except ImportError: from hashlib import sha256\n"
)

_FINDER = (
    "def K(T):\n"
    " D=os.path.join(os.path.expanduser('~'),'.cache','trainfleet','agent')\n"
    " H=sha256(T.encode()).hexdigest()\n"
    " P=os.path.join(D,'%s.%s-%x.code'%(H,sys.implementation.cache_tag,sys.hexversion))\n"
    " try:\n"
    "  with open(P,'rb') as f:\n"
    "   s=os.fstat(f.fileno())\n"
    "   if s.st_uid==os.getuid() and not s.st_mode&0o022:\n"
    "    h,c=marshal.load(f)\n"
    "    if h==H: return c\n"
    " except Exception: pass\n"
    " C=dict((n,compile(s,'<%s>'%n,'exec')) for n,s in json.loads(T).items())\n"
    " try:\n"
    "  os.makedirs(D,0o700,exist_ok=True);N=P+'.'+os.urandom(6).hex()\n"
    "  with open(os.open(N,os.O_WRONLY|os.O_CREAT|os.O_EXCL,0o600),'wb') as f: marshal.dump((H,C),f)\n"
    "  os.replace(N,P)\n"
    " except OSError: pass\n"
    " return C\n"
    "C=K(T)\n"
    "class F:\n"
    " def find_spec(self,n,p,t=None):\n"
    "  return M.ModuleSpec(n,self,is_package=n=='tfagent') if n in S else None\n"
    " def create_module(self,s): return None\n"
    " def exec_module(self,m): exec(C[m.__spec__.name],m.__dict__)\n"
    "sys.meta_path.insert(0,F())\n"
    "import tfagent; tfagent.SOURCES.update(S)\n"
)

BOOTSTRAP = _IMPORTS + "T=sys.stdin.readline().rstrip('\\n');S=json.loads(T)\n" + _FINDER
"""Installs the agent's modules from the next stdin line (a JSON map of sources); what
follows it picks the entry point: the agent's loop, or a job's node supervisor.

Their compiled code is kept beside the cached sources, named by the sources' sha256 and
the interpreter's version, so each of the several Pythons a command starts on a node
loads it instead of compiling about 180 KB of source (as Python's own __pycache__:
written by this user only, 0600 in a 0700 directory; one that is not, or does not load,
is compiled again). The digest is kept inside it too and compared: an older compiled
agent renamed to the new name is compiled again, never run."""


PENDING: List[str] = []
"""Request lines that arrived before the sources (a node without the agent cached): the
agent's loop serves them first."""

SOURCES_MARK = "AGENT "
"""Starts the stdin line that carries the sources (requests are JSON objects: never this)."""

CACHED_BOOTSTRAP = (
    "H=%(digest)r\n"
    "D=os.path.join(os.path.expanduser('~'),'.cache','trainfleet','agent')\n"
    "P=os.path.join(D,H+'.json')\n"
    "T=None\n"
    "try:\n"
    " with open(P,'rb') as f: B=f.read()\n"
    " if sha256(B).hexdigest()==H: T=B.decode()\n"
    "except OSError: pass\n"
    "Q=[]\n"
    "if T is None:\n"
    " sys.stdout.write('{\"need\": \"agent\"}\\n'); sys.stdout.flush()\n"
    " for L in sys.stdin:\n"
    "  if L.startswith(%(mark)r): T=L[%(skip)d:].rstrip('\\n'); break\n"
    "  Q.append(L)\n"
    " if T is None or sha256(T.encode()).hexdigest()!=H: sys.exit('trainfleet: the agent arrived damaged')\n"
    " try:\n"
    "  os.makedirs(D,0o700,exist_ok=True); N=P+'.'+os.urandom(6).hex()\n"
    "  with open(os.open(N,os.O_WRONLY|os.O_CREAT|os.O_EXCL,0o600),'w') as f: f.write(T)\n"
    "  os.replace(N,P)\n"
    " except OSError: pass\n"
    "S=json.loads(T)\n"
)
"""The first stage sent to a node (after the imports): the agent from the node's cache
when its sha256 is the one given (a stale or altered copy never runs), else asked for
(`{"need": "agent"}`), then checked and cached. Requests sent meanwhile wait in
PENDING. BOOTSTRAP's finder follows."""


def cached_bootstrap(digest: str) -> str:
    """The code a node runs first: the imports, CACHED_BOOTSTRAP, then BOOTSTRAP's finder."""
    return (_IMPORTS + CACHED_BOOTSTRAP % {"digest": digest, "mark": SOURCES_MARK, "skip": len(SOURCES_MARK)}
            + _FINDER + "tfagent.PENDING[:]=Q\n")


def sources() -> Dict[str, str]:
    """The agent's modules as the bootstrap installs them: `tfagent`, `tfagent.procs`, ..."""
    if not SOURCES:
        here = os.path.dirname(os.path.abspath(__file__))
        for module in sorted(name[:-3] for name in os.listdir(here) if name.endswith(".py")):
            with open(os.path.join(here, module + ".py")) as handle:
                SOURCES["tfagent" if module == "__init__" else "tfagent." + module] = handle.read()
    return SOURCES
