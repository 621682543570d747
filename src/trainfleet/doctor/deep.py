"""`doctor --deep`: every device of every node exercised at once for a few seconds, and the
slow or broken one named by how far it sits from the fleet's median (pure, but for the
program the nodes run).

On each node the fleet's Python (with torch) runs BURN: on every GPU at once a matmul
burn (bf16, TFLOPS) and host-to-device and device-to-host copies from pinned memory
(GB/s); on a node without a GPU, one CPU core's float32 matmul, so that a throttled or
oversubscribed machine stands out too. A GPU that fails (a CUDA error, an Xid) fails its
node's run, which is said with its output. Across nodes, NCCL's bus bandwidth is what
`trainfleet bench net` measures (it runs NCCL on GPUs).
"""

from __future__ import annotations

import json
import shlex
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

BURN = r'''
import json, sys, threading, time
import torch
seconds = float(sys.argv[1])

def burn(device, dtype, size, out):
    try:
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *a: None)
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(device)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(8):
                a @ b
            sync(device)
            count += 8
        out["tflops"] = round(2 * size ** 3 * count / (time.perf_counter() - start) / 1e12, 4)
        if device.type == "cuda":
            host = torch.empty(256 * 2 ** 20, dtype=torch.uint8).pin_memory()
            there = torch.empty_like(host, device=device)
            for direction, copy in (("h2d_gbps", lambda: there.copy_(host, non_blocking=True)),
                                    ("d2h_gbps", lambda: host.copy_(there, non_blocking=True))):
                copy(); sync(device)
                start = time.perf_counter()
                for _ in range(10):
                    copy()
                sync(device)
                out[direction] = round(10 * host.numel() / (time.perf_counter() - start) / 1e9, 2)
    except Exception as exc:
        out["error"] = "%s: %s" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")

results = []
if torch.cuda.is_available():
    threads = []
    for index in range(torch.cuda.device_count()):
        out = {"device": "GPU %d" % index, "name": torch.cuda.get_device_name(index)}
        results.append(out)
        threads.append(threading.Thread(target=burn, args=(torch.device("cuda", index), torch.bfloat16, 8192, out)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
else:
    torch.set_num_threads(1)
    out = {"device": "cpu", "name": "one CPU core"}
    results.append(out)
    burn(torch.device("cpu"), torch.float32, 512, out)
print("TRAINFLEET_DEEP " + json.dumps(results))
'''

SLOW = 0.8
"""A device below this share of the fleet's median (for its kind) is named (warn)..."""
BROKEN = 0.5
"""...and below this one, it fails."""
MEASURES = (("tflops", "TFLOPS", "matmul"), ("h2d_gbps", "GB/s", "host-to-device copies"),
            ("d2h_gbps", "GB/s", "device-to-host copies"))


@dataclass(frozen=True)
class Device:
    node: str
    device: str
    """`GPU 3`, or `cpu`."""
    name: str
    values: Mapping[str, float]
    error: str = ""


def burn_command(python: str, seconds: float) -> str:
    return f"{shlex.quote(python)} -c {shlex.quote(BURN)} {seconds:g}"


def parse(node: str, stdout: str) -> list[Device] | None:
    """The devices a node's run reported, or None where it printed no result."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("TRAINFLEET_DEEP "):
            return [Device(node=node, device=d["device"], name=d["name"], error=d.get("error", ""),
                           values={k: float(d[k]) for k, _, _ in MEASURES if k in d})
                    for d in json.loads(line.split(" ", 1)[1])]
    return None


def findings(devices: list[Device]) -> list[tuple[str, tuple[str, ...], str, str]]:
    """(verdict, nodes, summary, remedy): a device that failed its burn; one whose throughput
    or copy bandwidth sits far below the median of the fleet's devices of its kind; and
    the medians, as a note."""
    found: list[tuple[str, tuple[str, ...], str, str]] = []
    for device in devices:
        if device.error:
            found.append(("FAIL", (device.node,), f"{device.device} ({device.name}) failed its burn: {device.error}",
                          f"`trainfleet doctor` on {device.node} for its GPU health; reset the GPU when idle, or "
                          f"`trainfleet cordon {device.node}` and ask the provider"))
    for name in sorted({d.name for d in devices}):
        alike = [d for d in devices if d.name == name and not d.error]
        for key, unit, what in MEASURES:
            measured = [d for d in alike if key in d.values]
            if len(measured) < 2:
                continue
            median = statistics.median(d.values[key] for d in measured)
            for device in measured:
                share = device.values[key] / median if median else 1.0
                if share < SLOW:
                    found.append(("FAIL" if share < BROKEN else "warn", (device.node,),
                                  f"{device.device} ({name}): {what} at {device.values[key]:g} {unit}, "
                                  f"{1 - share:.0%} below the fleet's median ({median:g} {unit})",
                                  "a GPU held down (`trainfleet doctor` shows slowdowns and PCIe links), or a machine "
                                  "others share; leave it out with -n, or ask the provider" if device.device != "cpu"
                                  else "a machine held down or shared (its CPU quota, other tenants); leave it out "
                                       "with -n"))
            found.append(("info", tuple(sorted({d.node for d in measured})),
                          f"{name}: {what} median {median:g} {unit} over {len(measured)} device(s)", ""))
    return found
