"""`trainfleet top` on one node: CPU, memory and GPUs, and each running job's share."""

from __future__ import annotations

import os
import time
from typing import Dict, List, Tuple

from . import procs
from .protocol import TopGpu, TopJob, TopReply, TopRequest
from .metrics import latest_on_node
from .records import LOG_NAME, TAIL, job_states, list_states, live_state, log_lines, node_dir

def _cpu_total() -> Tuple[float, float]:
    with open("/proc/stat") as handle:
        values = [float(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)
    return sum(values), idle


def _process_ticks(pid: int) -> float:
    try:
        with open("/proc/%d/stat" % pid) as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return float(fields[11]) + float(fields[12])
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss(pid: int) -> int:
    try:
        with open("/proc/%d/statm" % pid) as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _memory() -> Tuple[int, int]:
    info: Dict[str, int] = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            info[name] = int(rest.split()[0]) * 1024
    return info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0)), info["MemTotal"]


def _gpus() -> List[TopGpu]:
    from .facts import run_quiet

    out = run_quiet(["nvidia-smi", "--query-gpu=index,utilization.gpu,memory.used,memory.total",
                     "--format=csv,noheader,nounits"], timeout=10) or ""
    found = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4:
            found.append(TopGpu(index=parts[0], util=float(parts[1]), memory_used=float(parts[2]) * 2**20,
                                memory_total=float(parts[3]) * 2**20))
    return found


def top(request: TopRequest) -> TopReply:
    # The records are read once a look: with `states` (the dashboard) they also carry metrics.
    records = (job_states(request.workdir) if request.states else
               [live_state(request.workdir, state) for state in list_states(request.workdir).values()])
    running = [state.job_id for state in records if state.state.live]
    members = {job_id: procs.job_processes(job_id) for job_id in running}
    total0, idle0 = _cpu_total()
    ticks0 = {p.pid: _process_ticks(p.pid) for listed in members.values() for p in listed}
    time.sleep(request.interval)
    total1, idle1 = _cpu_total()
    elapsed = max(total1 - total0, 1.0)
    cores = os.cpu_count() or 1
    found = []
    for job_id, listed in members.items():
        used = sum(_process_ticks(p.pid) - ticks0.get(p.pid, 0.0) for p in listed)
        lines = log_lines(os.path.join(node_dir(request.workdir, job_id), LOG_NAME), tail=TAIL)
        found.append(TopJob(job_id=job_id, processes=len(listed), cpu_percent=round(100.0 * used / elapsed * cores, 1),
                            rss_bytes=sum(_rss(p.pid) for p in listed), last_line=lines[-1][1][:200] if lines else "",
                            steps_per_s=latest_on_node(lines)[1]))
    used_memory, total_memory = _memory()
    return TopReply(cpu_percent=round(100.0 * (1 - (idle1 - idle0) / elapsed), 1), memory_used=used_memory,
                    memory_total=total_memory, gpus=_gpus(), jobs=found,
                    states=records if request.states else [])
