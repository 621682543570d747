"""trainfleet's hook in every Python process of a job whose ranks another runner starts
(`--launcher head`: DeepSpeed's pdsh runner, GPT-NeoX's deepy.py, mpirun).

The runner exports PYTHONPATH (with this directory) and TRAINFLEET_JOB_DIR to every node.
Here, on each node, this loads the node's own variables (its training interface) and
the job's secrets (from a 0600 file in memory, /dev/shm, removed when the job ends:
never on disk, never in the runner's command lines), and in each rank marks its output
and records its first failure as the rank wrapper does. Then it hands over to any other
sitecustomize further down the path.
"""

import json
import os
import sys


def _load(path, private=False):
    """A JSON object from `path`. `private`: only a file of this user's, readable by nobody
    else, and not a link: a file another local user planted at the guessable name (to
    inject LD_PRELOAD, say) is never read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return {}
    try:
        found = os.fstat(fd)
        if private and (found.st_uid != os.getuid() or found.st_mode & 0o077):
            return {}
        with os.fdopen(fd, closefd=False) as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}
    finally:
        os.close(fd)


def _install():
    job_dir = os.environ.get("TRAINFLEET_JOB_DIR")
    job_id = os.environ.get("TRAINFLEET_JOB_ID")
    if not job_dir or not job_id:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    try:
        import rankwrap
    finally:
        sys.path.remove(here)
    for name, value in _load(os.path.join(rankwrap.node_records(job_dir), "node.env")).items():
        os.environ.setdefault(name, value)
    node = os.environ.get("TRAINFLEET_NODE", "")
    for name, value in _load("/dev/shm/trainfleet-%s-%s-secrets" % (job_id, node), private=True).items():
        os.environ.setdefault(name, value)
    if "RANK" in os.environ and "LOCAL_RANK" in os.environ and not os.environ.get("TRAINFLEET_RANK_MARKED"):
        os.environ["TRAINFLEET_RANK_MARKED"] = "1"  # its children (data loaders) write through this rank's marks
        rank = int(os.environ["RANK"])
        rankwrap.prefix_output(rank)
        rankwrap.stacks_on_signal()
        rankwrap.record_uncaught(rank)


def _chain():
    """Run the sitecustomize this one shadows, if there is one."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_install()
_chain()
