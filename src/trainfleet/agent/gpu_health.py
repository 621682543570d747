"""A node's GPUs as NVIDIA's own tools see them: `nvidia-smi -q -x` (ECC, row remapping,
retired pages, PCIe link, clock slowdowns, persistence) and the kernel log's Xid events.
Read without root where the node allows it; what could not be read is said, not guessed."""

from __future__ import annotations

import re
import subprocess
from typing import Dict, List, Optional, Tuple
from xml.etree import ElementTree

from .protocol import GpuHealth, GpuHealthInfo, XidEvent

XID = re.compile(r"NVRM: Xid \((?:PCI:)?([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2})(?:\.\d)?\): (\d+)(.*)")
"""`NVRM: Xid (PCI:0000:4e:00): 79, pid=..., name=..., GPU has fallen off the bus.`"""
# NVIDIA's Xid catalogue (docs.nvidia.com/deploy/xid-errors): what each means, and whose it is.
HARDWARE_XIDS = {
    48: "double-bit ECC error",
    61: "internal micro-controller breakpoint",
    62: "internal micro-controller halt",
    63: "ECC page retirement or row remapping event",
    64: "ECC page retirement or row remapping failure",
    74: "NVLink error",
    79: "fallen off the bus",
    92: "high single-bit ECC error rate",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    123: "SPI PMU RPC failure",
    140: "unrecovered ECC error",
}
APPLICATION_XIDS = {
    13: "graphics engine exception (an illegal address or instruction in a kernel)",
    31: "GPU memory page fault (a kernel read or wrote memory it did not own)",
    43: "GPU stopped processing (a job's kernel was killed)",
    45: "preemptive cleanup (a job's contexts torn down)",
    68: "video processor exception",
}
HARDWARE_SLOWDOWN = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")


def _run(argv: List[str], timeout: float = 20) -> Tuple[int, str]:
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                              timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, str(exc)
    return done.returncode, done.stdout if done.returncode == 0 else (done.stderr or done.stdout).strip()


def _text(element: Optional[ElementTree.Element], *path: str) -> Optional[str]:
    for name in path:
        if element is None:
            return None
        element = element.find(name)
    if element is None or element.text is None:
        return None
    value = element.text.strip()
    return None if value in ("", "N/A", "[N/A]", "Unknown Error", "[Unknown Error]") else value


def _number(value: Optional[str]) -> Optional[int]:
    found = re.match(r"^(\d+)", value or "")
    return int(found.group(1)) if found else None


def _yes(value: Optional[str]) -> Optional[bool]:
    return None if value is None else value.lower() in ("yes", "enabled", "active")


def parse_smi_xml(text: str) -> List[GpuHealth]:
    """Every <gpu> of `nvidia-smi -q -x`. Field names changed across drivers (clocks
    throttle reasons became clocks event reasons in 535; ECC counts moved from
    single/double bit to SRAM/DRAM): both forms are read."""
    root = ElementTree.fromstring(text)
    found = []
    for position, gpu in enumerate(root.findall("gpu")):
        bus = gpu.get("id") or _text(gpu, "pci", "pci_bus_id") or ""
        link = gpu.find("pci/pci_gpu_link_info")
        reasons = gpu.find("clocks_event_reasons")
        if reasons is None:
            reasons = gpu.find("clocks_throttle_reasons")
        active = []
        idle = False
        for child in list(reasons) if reasons is not None else []:
            reason = re.sub(r"^clocks_(event|throttle)_reason_", "", child.tag)
            if _yes((child.text or "").strip()) and reason in HARDWARE_SLOWDOWN:
                active.append(reason)
            if reason == "gpu_idle" and _yes((child.text or "").strip()):
                idle = True
        volatile = gpu.find("ecc_errors/volatile")
        uncorrected = None
        if volatile is not None:
            counts = [_number(_text(volatile, name)) for name in ("sram_uncorrectable", "dram_uncorrectable")]
            counts += [_number(_text(volatile, "double_bit", "total"))]
            known = [c for c in counts if c is not None]
            uncorrected = sum(known) if known else None
        retired = gpu.find("retired_pages")
        pending = _text(retired, "pending_retirement") or _text(retired, "pending_blacklist")
        found.append(GpuHealth(
            index=_text(gpu, "minor_number") or str(position),
            uuid=_text(gpu, "uuid") or "",
            bus_id=bus,
            name=_text(gpu, "product_name") or "",
            memory_mib=_number(_text(gpu, "fb_memory_usage", "total")),
            persistence=_yes(_text(gpu, "persistence_mode")),
            pcie_gen=_number(_text(link, "pcie_gen", "current_link_gen")),
            pcie_gen_max=_number(_text(link, "pcie_gen", "max_link_gen")),
            pcie_width=_number(_text(link, "link_widths", "current_link_width")),
            pcie_width_max=_number(_text(link, "link_widths", "max_link_width")),
            ecc_uncorrected=uncorrected,
            retired_pending=_yes(pending),
            remap_pending=_yes(_text(gpu, "remapped_rows", "remapped_row_pending")),
            remap_failure=_yes(_text(gpu, "remapped_rows", "remapped_row_failure")),
            slowdown=active,
            idle=idle,
        ))
    return found


def parse_xids(text: str) -> List[XidEvent]:
    events = []
    for line in text.splitlines():
        found = XID.search(line)
        if found:
            when = line[:found.start()].strip().strip("[]").replace("kernel:", "").strip()
            events.append(XidEvent(xid=int(found.group(2)), bus_id=found.group(1), text=line[found.start():].strip(),
                                   when=when))
    return events


def same_bus(xid_bus: str, smi_bus: str) -> bool:
    """`0000:4e:00` (the kernel's) against `00000000:4E:00.0` (nvidia-smi's)."""
    def parts(bus: str) -> Tuple[int, int, int]:
        domain, bus_number, device = bus.split(".")[0].split(":")[-3:]
        return int(domain, 16), int(bus_number, 16), int(device, 16)

    try:
        return parts(xid_bus) == parts(smi_bus)
    except ValueError:
        return False


def kernel_log(sudo: bool = True) -> Tuple[Optional[str], str]:
    """(the kernel log since boot, where it came from) or (None, why it could not be read):
    dmesg (restricted to root on many distributions), the journal (users in `adm` or
    `systemd-journal`), then sudo without a password (doctor's, asked for by the user: a
    refused sudo is logged on the node, so a job's own watch never tries it)."""
    tried = []
    ways = [(["dmesg"], "dmesg"), (["journalctl", "-k", "-b", "--no-pager", "-q"], "journalctl -k")]
    for argv, source in ways + ([(["sudo", "-n", "dmesg"], "sudo dmesg")] if sudo else []):
        code, out = _run(argv)
        if code == 0:
            return out, source
        tried.append("%s: %s" % (source, (out.strip().splitlines() or ["no output"])[-1][:120]))
    return None, "; ".join(tried)


NVLINK_GPU = re.compile(r"^GPU (\d+): .*\(UUID: (\S+)\)")
NVLINK_LINK = re.compile(r"^\s*Link (\d+): (.*)$")


def parse_nvlinks(text: str) -> Dict[str, Tuple[int, List[int]]]:
    """`nvidia-smi nvlink -s`: each GPU's UUID -> (its links, the inactive ones). A GPU
    without NVLink lists no link (or says it is not supported) and is left out."""
    found: Dict[str, Tuple[int, List[int]]] = {}
    uuid = ""
    for line in text.splitlines():
        gpu = NVLINK_GPU.match(line)
        if gpu:
            uuid = gpu.group(2)
            continue
        link = NVLINK_LINK.match(line)
        if link and uuid:
            count, down = found.get(uuid, (0, []))
            inactive = "inactive" in link.group(2).lower()
            found[uuid] = (count + 1, down + [int(link.group(1))] if inactive else down)
    return found


def health() -> GpuHealthInfo:
    code, out = _run(["nvidia-smi", "-q", "-x"], timeout=60)
    if code != 0:
        return GpuHealthInfo(error="nvidia-smi -q -x failed: %s" % (out.splitlines() or ["no output"])[-1][:200])
    try:
        gpus = parse_smi_xml(out)
    except ElementTree.ParseError as exc:
        return GpuHealthInfo(error="nvidia-smi -q -x gave no readable XML: %s" % exc)
    code, out = _run(["nvidia-smi", "nvlink", "-s"], timeout=30)
    links = parse_nvlinks(out) if code == 0 else {}
    for gpu in gpus:
        if gpu.uuid in links:
            gpu.nvlinks, gpu.nvlinks_down = links[gpu.uuid]
    log, source = kernel_log()
    return GpuHealthInfo(gpus=gpus, xids=parse_xids(log) if log is not None else [],
                         kernel_log=source if log is not None else "not readable (%s)" % source)


def uptime_origin() -> Optional[float]:
    """When the node booted (epoch seconds): dmesg's stamps count from there."""
    import time

    try:
        with open("/proc/uptime") as handle:
            return time.time() - float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class Watch:
    """A job's view of its node's GPUs: the Xid events already in the kernel log when it
    started, and the GPUs' bus ids then (a GPU that falls off the bus answers no more)."""

    def __init__(self) -> None:
        self.active = False
        self.seen = 0
        self.gpus = {}  # type: dict
        import shutil

        if shutil.which("nvidia-smi") is None:
            return
        log, _ = kernel_log(sudo=False)
        if log is None:
            return
        self.active = True
        self.seen = len(parse_xids(log))
        code, out = _run(["nvidia-smi", "--query-gpu=index,pci.bus_id,uuid", "--format=csv,noheader"], timeout=10)
        for line in out.splitlines() if code == 0 else []:
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 3:
                self.gpus[parts[1]] = "%s %s" % (parts[0], parts[2])

    def hardware_faults(self) -> List[XidEvent]:
        """Hardware Xid events since the job started, each with its GPU and time where known."""
        if not self.active:
            return []
        log, _ = kernel_log(sudo=False)
        if log is None:
            return []
        origin = uptime_origin()
        found = []
        for event in parse_xids(log)[self.seen:]:
            if event.xid not in HARDWARE_XIDS:
                continue
            try:
                event.at = origin + float(event.when) if origin is not None else None
            except ValueError:
                pass
            event.gpu = next((name for bus, name in self.gpus.items() if same_bus(event.bus_id, bus)), "")
            found.append(event)
        return found
