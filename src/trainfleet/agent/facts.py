"""What `run` and `doctor` need to know of a node, gathered in one pass."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

from . import procs
from .protocol import (FactSection, JobStatus, Disk, FactsReply, FactsRequest, Gpu, GpuInfo, Interface, JobSeen, Proc,
                       PythonInfo, Route, TorchInfo)


def run_quiet(argv: List[str], timeout: float = 5.0) -> Optional[str]:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def read_text(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def interfaces() -> List[Interface]:
    text = run_quiet(["ip", "-j", "-d", "addr", "show"])
    if text is None:
        return []
    found = []
    for link in json.loads(text):
        info = link.get("linkinfo", {}) or {}
        flags = link.get("flags", [])
        found.append(Interface(
            name=link.get("ifname") or "",
            up="UP" in flags and link.get("operstate") != "DOWN",
            loopback="LOOPBACK" in flags,
            kind=info.get("info_kind") or "",
            master=link.get("master"),
            addrs=["%s/%s" % (a["local"], a["prefixlen"]) for a in link.get("addr_info", [])
                   if a.get("family") == "inet"],
        ))
    return found


def route_to(peer: str) -> Optional[Route]:
    out = run_quiet(["ip", "-o", "route", "get", peer])
    if not out:
        return None
    fields = out.split()
    route = Route()
    for key in ("dev", "src", "via"):
        if key in fields:
            setattr(route, key, fields[fields.index(key) + 1])
    return route


_LISTED: Dict[str, List[str]] = {}


def package_version(name: str, installed: bool = False) -> Optional[str]:
    """From the name of its .dist-info directory on sys.path: importlib.metadata alone
    takes longer to import than the rest of the facts take to gather. `installed`: it is
    there, so ask importlib when no .dist-info names it."""
    wanted = re.sub(r"[-_.]+", "_", name).lower()
    for entry in sys.path:
        if entry not in _LISTED:
            try:
                _LISTED[entry] = [n for n in os.listdir(entry or ".") if n.endswith(".dist-info")]
            except OSError:
                _LISTED[entry] = []
        for item in _LISTED[entry]:
            dist, _, version = item[:-len(".dist-info")].partition("-")
            if version and re.sub(r"[-_.]+", "_", dist).lower() == wanted:
                return version
    if not installed:
        return None
    try:  # installed some other way (an .egg-info)
        from importlib import metadata
    except ImportError:
        return None
    try:
        return metadata.version(name)
    except Exception:
        return None


def torch_info() -> Optional[TorchInfo]:
    """Versions without importing torch (seconds of CPU on every node otherwise)."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    info = TorchInfo(version=package_version("torch", installed=True))
    text = read_text(os.path.join(list(spec.submodule_search_locations)[0], "version.py")) or ""
    match = re.search(r"^cuda\s*(?::\s*[^=]+)?=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE)
    info.cuda = match.group(1) if match else None
    for name in ("nvidia-nccl-cu13", "nvidia-nccl-cu12", "nvidia-nccl-cu11"):
        version = package_version(name)
        if version:
            info.nccl = version
            break
    return info


MISSING_PYTHON = "`%s` was not found by a non-interactive SSH shell"


def find_job_python(python: str) -> Optional[str]:
    """The fleet's `python:` as this shell finds it (a leading ~/ is this node's home)."""
    return shutil.which(os.path.expanduser(python) if python.startswith("~/") else python)


def software(python: str, reply: FactsReply) -> None:
    """The job's Python (the fleet's `python:`) and its torch. The agent runs on it where a
    non-interactive shell finds it; otherwise (a bare node: `setup:` has not made it yet)
    on python3, and that Python is asked in a process of its own."""
    found = find_job_python(python) if python else sys.executable
    if found is None:
        reply.python_missing = MISSING_PYTHON % python
        return
    if os.path.abspath(found) == os.path.abspath(sys.executable):
        reply.python = PythonInfo(version=sys.version.split()[0], executable=sys.executable)
        reply.torch = torch_info()
    else:
        answer = job_python_facts(found)
        if isinstance(answer, str):
            reply.python_missing = answer
            return
        reply.python, reply.torch = answer
    reply.torch_installed = reply.torch is not None


def job_python_facts(python: str) -> "Tuple[PythonInfo, Optional[TorchInfo]] | str":
    """What `python` says of itself and its torch (this module, run by it), or why it did not."""
    from . import BOOTSTRAP, sources

    entry = ("import tfagent.facts as F,json;T=F.torch_info();print(json.dumps([sys.version.split()[0],"
             "sys.executable,T and [T.version,T.cuda,T.nccl]]))\n")
    try:
        done = subprocess.run([python, "-c", BOOTSTRAP + entry], input=json.dumps(sources()) + "\n",
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return "`%s` did not run: %s" % (python, exc)
    try:
        version, executable, torch = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return "`%s` did not run trainfleet's check (exit status %s: %s); it needs Python 3.8 or newer" % (
            python, done.returncode, tail)
    return PythonInfo(version=version, executable=executable), TorchInfo(*torch) if torch else None


def gpu_info() -> Optional[GpuInfo]:
    if shutil.which("nvidia-smi") is None:
        return None
    gpus = run_quiet(["nvidia-smi", "--query-gpu=index,uuid,name,driver_version,memory.used",
                      "--format=csv,noheader,nounits"], timeout=15)
    if gpus is None:
        return GpuInfo(error="nvidia-smi failed")
    apps = run_quiet(["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,process_name", "--format=csv,noheader"],
                     timeout=15) or ""
    busy = {}
    for line in apps.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2 and parts[1].isdigit():
            pid = int(parts[1])
            busy.setdefault(parts[0], []).append(Proc(pid=pid, cmdline=parts[2] if len(parts) > 2 else "",
                                                      job_id=procs.job_of(pid)))
    found = []
    for line in gpus.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            found.append(Gpu(index=parts[0], uuid=parts[1], name=parts[2], driver=parts[3],
                             busy=busy.get(parts[1], [])))
    return GpuInfo(gpus=found)


def disk_free(path: str) -> Optional[Disk]:
    path = os.path.expanduser(path)
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    try:
        stats = os.statvfs(path or "/")
    except OSError:
        return None
    return Disk(path=path, free=stats.f_bavail * stats.f_frsize, total=stats.f_blocks * stats.f_frsize)


def docker_data_root() -> Optional[str]:
    """The data root the running Docker daemon reports, or None (no daemon, no answer)."""
    try:
        asked = subprocess.run(["docker", "info", "--format", "{{.DockerRootDir}}"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    root = asked.stdout.decode(errors="replace").strip()
    return root if asked.returncode == 0 and root.startswith("/") else None


def container_root(engine: str, explicit: str) -> Optional[str]:
    """Where the engine keeps images and containers: what fills up first ("No space left
    on device" inside a container). Docker: the running daemon's, else daemon.json's; podman: graphroot."""
    if explicit:
        return explicit
    if engine == "podman":
        conf = read_text("/etc/containers/storage.conf") or ""
        found = re.search(r'^\s*graphroot\s*=\s*"([^"]+)"', conf, re.MULTILINE)
        root = found.group(1) if found else "/var/lib/containers/storage"
        return root if os.path.isdir(root) else None
    # The running daemon knows best (a --data-root on its command line is in no file); asked
    # only for a fleet that runs Docker, not on every doctor of every other fleet.
    if engine == "docker":
        root = docker_data_root()
        if root:
            return root
    text = read_text("/etc/docker/daemon.json")
    if text:
        try:
            return json.loads(text).get("data-root") or "/var/lib/docker"
        except ValueError:
            pass
    return "/var/lib/docker" if os.path.isdir("/var/lib/docker") else None


def port_is_free(address: str, port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def free_ports(address: str, count: int) -> List[int]:
    """`count` different free ports (all held while choosing, so none repeats)."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probes.append(probe)
            probe.bind((address, 0))
        return [int(p.getsockname()[1]) for p in probes]
    finally:
        for probe in probes:
            probe.close()


def jobs_seen(workdir: str) -> List[JobSeen]:
    from . import records

    seen = []
    for job_id, processes in sorted(procs.all_jobs().items()):
        state = records.read_state(workdir, job_id)
        live = state is not None and records.supervisor_alive(workdir, job_id)
        seen.append(JobSeen(job_id=job_id, state=state.state if state else JobStatus.UNKNOWN, processes=processes,
                            live=live))
    return seen


def workdir_marks(workdir: str) -> Tuple[str, List[str]]:
    """Mark the workdir as this machine's, and list every machine's mark there: a workdir
    that other machines mark too is shared with them (an NFS home, the sandbox's home)."""
    from .rankwrap import node_key

    key = node_key()
    folder = os.path.join(os.path.expanduser(workdir), ".trainfleet", "nodes")
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, key), "w"):
            pass
        return key, sorted(os.listdir(folder))
    except OSError:
        return key, []


def gather(request: FactsRequest) -> FactsReply:
    wanted = set(request.sections)
    reply = FactsReply(hostname=socket.gethostname(), time=time.time(), home=os.path.expanduser("~"))
    if FactSection.NET in wanted:
        ports = (read_text("/proc/sys/net/ipv4/ip_local_port_range") or "32768 60999").split()
        reply.port_range = [int(p) for p in ports]
        reply.interfaces = interfaces()
        reply.routes = dict((peer, route_to(peer)) for peer in request.peers)
    if FactSection.PORTS in wanted:
        address = request.port_address or "0.0.0.0"
        reply.ports = dict((str(p), None if port_is_free(address, p) else procs.port_holder(p))
                           for p in request.ports)
        reply.free_ports = free_ports(address, max(1, request.free))
        reply.free_port = reply.free_ports[0]
    if FactSection.SOFTWARE in wanted:
        software(request.python, reply)
    elif FactSection.PYTHON in wanted and request.python and find_job_python(request.python) is None:
        reply.python_missing = MISSING_PYTHON % request.python
    if FactSection.GPU in wanted:
        reply.gpu = gpu_info()
        driver = read_text("/proc/driver/nvidia/version")
        reply.driver = driver.splitlines()[0].strip() if driver else None
    if FactSection.GPU_HEALTH in wanted and shutil.which("nvidia-smi") is not None:
        from .gpu_health import health

        reply.gpu_health = health()
    if FactSection.RDMA in wanted:
        from .rdma import ib_ports

        reply.ib_ports = ib_ports()
    if FactSection.DISK in wanted:
        reply.disk = disk_free(request.workdir)
        root = container_root(request.container_engine, request.container_root)
        reply.container_disk = disk_free(root) if root else None
    if FactSection.JOBS in wanted:
        reply.jobs = jobs_seen(request.workdir)
    if FactSection.PROJECT in wanted:
        from . import project

        reply.project = project.state(request.workdir, request.project)
    if FactSection.WORKDIR in wanted:
        reply.node_key, reply.workdir_keys = workdir_marks(request.workdir)
    if FactSection.FILES in wanted:
        base = os.path.expanduser(request.workdir)
        reply.files = dict((path, os.path.exists(os.path.join(base, os.path.expanduser(path))))
                           for path in request.files)
    return reply
