"""GPUs for the sandbox that answer like real ones: each node gets, in its private /tmp,
an `nvidia-smi` that answers from the node's own state (the queries trainfleet makes,
`-q -x`, `nvlink -s`, `-L`, `-r`, `-pm`) and a `dmesg` that prints the node's kernel log, both first
on the PATH of every SSH session (sshd's SetEnv). `sandbox fault gpu` changes that state
and writes the Xid line a real driver would, where the agent reads it."""

from __future__ import annotations

import json
from pathlib import Path

FOLDER = ".trainfleet-fake-gpus"
"""Under the node's /tmp (private to it)."""
NODE_BIN = f"/tmp/{FOLDER}"
PATH = f"{NODE_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

XID_TEXT = {79: "GPU has fallen off the bus.", 48: "An uncorrectable double bit error (DBE) has been detected on GPU "
            "in the framebuffer at partition 0, subpartition 1.", 74: "NVLink: fatal error detected on link 3",
            94: "Contained: SM (0x1). RST: No, D-RST: No", 95: "Uncontained: FBHUB. RST: Yes, D-RST: No",
            63: "Row Remapper: New row marked for remapping, reset gpu to activate.", 13: "Graphics SM Warp "
            "Exception on (GPC 0, TPC 0, SM 0): Out Of Range Address", 31: "Ch 00000008, intr 00000000. MMU Fault: "
            "ENGINE GRAPHICS GPCCLIENT_T1_0 faulted @ 0x7f12_34560000. Fault is of type FAULT_PDE ACCESS_TYPE_READ"}

SCRIPT = r'''#!/usr/bin/env python3
# trainfleet sandbox: a fake nvidia-smi answering from state.json beside it.
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "state.json")) as f:
    state = json.load(f)
gpus = state["gpus"]
args = sys.argv[1:]

def save():
    with open(os.path.join(here, "state.json"), "w") as f:
        json.dump(state, f)

def value(gpu, field):
    return {"index": gpu["index"], "uuid": gpu["uuid"], "name": gpu["name"], "driver_version": state["driver"],
            "memory.used": "0", "memory.total": str(gpu["memory_mib"]), "utilization.gpu": "0",
            "pci.bus_id": gpu["bus"], "persistence_mode": "Enabled" if gpu["persistence"] else "Disabled",
            "pcie.link.width.current": str(gpu["width"]), "pcie.link.width.max": str(gpu["width_max"])
            }.get(field, "[N/A]")

def xml():
    yes = lambda b: "Yes" if b else "No"
    active = lambda b: "Active" if b else "Not Active"
    out = ['<?xml version="1.0" ?>', '<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">', "<nvidia_smi_log>",
           "<driver_version>%s</driver_version>" % state["driver"], "<cuda_version>%s</cuda_version>" % state["cuda"],
           "<attached_gpus>%d</attached_gpus>" % len(gpus)]
    for g in gpus:
        reasons = "".join("<clocks_event_reason_%s>%s</clocks_event_reason_%s>" % (r, active(r in g["slowdown"] or
                          (r == "gpu_idle")), r) for r in ("gpu_idle", "hw_slowdown", "hw_thermal_slowdown",
                                                           "hw_power_brake_slowdown", "sw_thermal_slowdown"))
        out.append(
            '<gpu id="%s"><product_name>%s</product_name><persistence_mode>%s</persistence_mode>'
            "<uuid>%s</uuid><minor_number>%s</minor_number>"
            "<pci><pci_bus_id>%s</pci_bus_id><pci_gpu_link_info><pcie_gen><max_link_gen>%d</max_link_gen>"
            "<current_link_gen>%d</current_link_gen></pcie_gen><link_widths><max_link_width>%dx</max_link_width>"
            "<current_link_width>%dx</current_link_width></link_widths></pci_gpu_link_info></pci>"
            "<fb_memory_usage><total>%d MiB</total><used>0 MiB</used></fb_memory_usage>"
            "<clocks_event_reasons>%s</clocks_event_reasons>"
            "<ecc_errors><volatile><sram_correctable>0</sram_correctable><sram_uncorrectable>0</sram_uncorrectable>"
            "<dram_correctable>0</dram_correctable><dram_uncorrectable>%d</dram_uncorrectable></volatile>"
            "</ecc_errors><retired_pages><pending_retirement>No</pending_retirement></retired_pages>"
            "<remapped_rows><remapped_row_corr>0</remapped_row_corr><remapped_row_unc>%d</remapped_row_unc>"
            "<remapped_row_pending>%s</remapped_row_pending><remapped_row_failure>%s</remapped_row_failure>"
            "</remapped_rows></gpu>" % (
                g["bus"], g["name"], "Enabled" if g["persistence"] else "Disabled", g["uuid"], g["index"], g["bus"],
                g["gen_max"], g["gen"], g["width_max"], g["width"], g["memory_mib"], reasons, g["ecc"],
                1 if g["remap_pending"] else 0, yes(g["remap_pending"]), yes(g["remap_failure"])))
    out.append("</nvidia_smi_log>")
    return "\n".join(out)

if "-q" in args and "-x" in args:
    print(xml())
elif any(a.startswith("--query-gpu=") for a in args):
    fields = next(a for a in args if a.startswith("--query-gpu="))[len("--query-gpu="):].split(",")
    for g in gpus:
        print(", ".join(value(g, f) for f in fields))
elif any(a.startswith("--query-compute-apps=") for a in args):
    pass
elif args[:1] == ["nvlink"] and ("-s" in args or "--status" in args):
    for g in gpus:
        print("GPU %s: %s (UUID: %s)" % (g["index"], g["name"], g["uuid"]))
        for link in range(g["nvlinks"]):
            print("\t Link %d: %s" % (link, "<inactive>" if link in g["nvlinks_down"] else "26.562 GB/s"))
elif "-L" in args:
    for g in gpus:
        print("GPU %s: %s (UUID: %s)" % (g["index"], g["name"], g["uuid"]))
elif "-r" in args:
    chosen = args[args.index("-i") + 1] if "-i" in args else None
    for g in gpus:
        if chosen in (None, g["index"]):
            g["ecc"], g["remap_pending"], g["nvlinks_down"] = 0, False, []
            print("GPU %s was successfully reset." % g["bus"])
    save()
elif "-pm" in args:
    for g in gpus:
        g["persistence"] = args[args.index("-pm") + 1] == "1"
    save()
    print("Persistence mode set for every GPU.")
else:
    print("NVIDIA-SMI %s (trainfleet sandbox)  Driver Version: %s  CUDA Version: %s" % (
        state["driver"], state["driver"], state["cuda"]))
    for g in gpus:
        print("|   %s  %s  %s  %dMiB |" % (g["index"], g["name"], g["bus"], g["memory_mib"]))
'''

DMESG = f'''#!/bin/sh
# trainfleet sandbox: the node's kernel log, as far as its fake GPUs go.
exec cat {NODE_BIN}/kern.log
'''


def host_folder(directory: str | Path, node: str) -> Path:
    """The node's fake-GPU folder as this machine sees it (the node's /tmp is its own)."""
    return Path(directory) / "nodes" / node / "tmp" / FOLDER


def healthy(count: int, node_index: int) -> dict[str, object]:
    gpus = [{"index": str(i), "uuid": f"GPU-{node_index:08x}-{i:04x}-4000-8000-{0xfeed00000000 + node_index:012x}",
             "bus": f"00000000:{0x18 + 0x10 * i:02X}:00.0", "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559,
             "persistence": True, "gen": 5, "gen_max": 5, "width": 16, "width_max": 16, "ecc": 0,
             "remap_pending": False, "remap_failure": False, "slowdown": [], "nvlinks": 18, "nvlinks_down": []}
            for i in range(count)]
    return {"driver": "550.127.05", "cuda": "12.4", "gpus": gpus}


def install(folder: Path, count: int, node_index: int) -> None:
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    (folder / "state.json").write_text(json.dumps(healthy(count, node_index)))
    (folder / "kern.log").write_text("")
    for name, text in (("nvidia-smi", SCRIPT), ("dmesg", DMESG)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)


def count(folder: Path) -> int:
    try:
        return len(json.loads((folder / "state.json").read_text())["gpus"])
    except (OSError, ValueError, KeyError):
        return 0


def inject(folder: Path, gpu: int, *, xid: int | None = None, ecc: int = 0, pcie_width: int | None = None,
           remap_pending: bool = False, slowdown: str = "", nvlink_down: int | None = None) -> str:
    """Change one GPU's state as the fault would; returns what was done, in words."""
    state = json.loads((folder / "state.json").read_text())
    gpus = state["gpus"]
    if not 0 <= gpu < len(gpus):
        raise ValueError(f"--gpu {gpu}: the node has GPUs 0 to {len(gpus) - 1}")
    chosen = gpus[gpu]
    done = []
    if xid is not None:
        bus = chosen["bus"]  # 00000000:18:00.0 -> PCI:0000:18:00, as the driver writes it
        # Stamped as dmesg does, in seconds since the machine booted (the node's clock is the host's).
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        line = f"[{uptime:12.6f}] NVRM: Xid (PCI:{bus[4:14].lower()}): {xid}, pid=4242, name=python, " \
               f"{XID_TEXT.get(xid, 'event')}\n"
        with open(folder / "kern.log", "a") as log:
            log.write(line)
        done.append(f"Xid {xid}")
        if xid in (48, 94, 95):
            chosen["ecc"] += 1
    if ecc:
        chosen["ecc"] += ecc
        done.append(f"{ecc} uncorrected ECC error(s)")
    if pcie_width is not None:
        chosen["width"] = pcie_width
        done.append(f"PCIe x{pcie_width}")
    if remap_pending:
        chosen["remap_pending"] = True
        done.append("row remap pending")
    if slowdown:
        chosen["slowdown"] = sorted(set(chosen["slowdown"]) | {slowdown})
        done.append(slowdown)
    if nvlink_down is not None:
        if not 0 <= nvlink_down < chosen["nvlinks"]:
            raise ValueError(f"--nvlink-down {nvlink_down}: the GPU has links 0 to {chosen['nvlinks'] - 1}")
        chosen["nvlinks_down"] = sorted(set(chosen["nvlinks_down"]) | {nvlink_down})
        done.append(f"NVLink link {nvlink_down} down")
    if not done:
        raise ValueError("say what goes wrong: --xid N, --ecc N, --pcie-width W, --row-remap-pending, --slowdown or "
                         "--nvlink-down L")
    (folder / "state.json").write_text(json.dumps(state))
    return f"GPU {gpu}: " + ", ".join(done)


def reset(folder: Path, node_index: int) -> None:
    """Healthy again, with as many GPUs (what `fault clear` does)."""
    if count(folder):
        install(folder, count(folder), node_index)
