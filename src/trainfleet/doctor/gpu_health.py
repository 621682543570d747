"""doctor's GPU health: pure, from each node's `nvidia-smi -q -x` and Xid events to
findings that name the node, the GPU (index, bus id, UUID) and what to do."""

from __future__ import annotations

from collections.abc import Mapping

from trainfleet.agent.gpu_health import APPLICATION_XIDS, HARDWARE_XIDS
from trainfleet.agent.protocol import GpuHealth, GpuHealthInfo, XidEvent
from trainfleet.results import fold_nodes

REPLACE = "leave it out (`trainfleet cordon {node}`) and ask the provider for a replacement, sending them {evidence}"


def _name(gpu: GpuHealth) -> str:
    return f"GPU {gpu.index} (bus {gpu.bus_id.lower()}, {gpu.uuid})"


def _gpu_of(event: XidEvent, gpus: list[GpuHealth]) -> GpuHealth | None:
    from trainfleet.agent.gpu_health import same_bus

    return next((g for g in gpus if same_bus(event.bus_id, g.bus_id)), None)


def node_findings(node: str, info: GpuHealthInfo) -> list[tuple[str, str, str, str]]:
    """(verdict, summary, remedy, evidence) for one node; verdicts as doctor's Verdict values."""
    found: list[tuple[str, str, str, str]] = []
    if info.error:
        return [("FAIL", info.error, "run `nvidia-smi -q` on the node; reinstall or reload the driver", "")]
    gpus = info.gpus
    seen: set[tuple[int, str]] = set()
    for event in info.xids:
        if (event.xid, event.bus_id) in seen:
            continue  # (a storm of the same Xid is one finding; the first is shown)
        seen.add((event.xid, event.bus_id))
        gpu = _gpu_of(event, gpus)
        where = _name(gpu) if gpu else f"the GPU at {event.bus_id}"
        when = f" at {event.when}" if event.when else ""
        try:  # dmesg's own stamp: seconds since the node booted
            when = f" {float(event.when):.0f} s after boot"
        except ValueError:
            pass
        if event.xid in HARDWARE_XIDS:
            evidence = f"the kernel log line `{event.text}` and the GPU's UUID {gpu.uuid if gpu else '?'}"
            reset = f"reset it when idle (`sudo nvidia-smi -r -i {gpu.index}`) and run doctor again; if it " \
                    f"comes back, " if gpu else ""
            found.append(("FAIL", f"{where}: Xid {event.xid}, {HARDWARE_XIDS[event.xid]}{when} (hardware)",
                          reset + REPLACE.format(node=node, evidence=evidence), event.text))
        elif event.xid in APPLICATION_XIDS:
            found.append(("info", f"{where}: Xid {event.xid}, {APPLICATION_XIDS[event.xid]}{when}: a job's fault, "
                          f"not the GPU's", "nothing to do for the node; the job that ran then had a bug", event.text))
        else:
            found.append(("warn", f"{where}: Xid {event.xid}{when}", "look it up in NVIDIA's Xid catalogue "
                          "(docs.nvidia.com/deploy/xid-errors); run doctor again after a reset", event.text))
    for gpu in gpus:
        name = _name(gpu)
        if gpu.ecc_uncorrected:
            found.append(("FAIL", f"{name}: {gpu.ecc_uncorrected} uncorrected ECC error(s) since the driver loaded",
                          f"reset it when idle (`sudo nvidia-smi -r -i {gpu.index}`); if they return, "
                          + REPLACE.format(node=node, evidence="`nvidia-smi -q -d ECC,ROW_REMAPPER` of it"), ""))
        if gpu.remap_failure:
            found.append(("FAIL", f"{name}: row remapping failed (no spare rows left in its memory)",
                          REPLACE.format(node=node, evidence="`nvidia-smi -q -d ROW_REMAPPER` of it"), ""))
        elif gpu.remap_pending or gpu.retired_pending:
            what = "a row remap" if gpu.remap_pending else "a page retirement"
            found.append(("warn", f"{name}: {what} is pending (takes effect at the next GPU reset)",
                          f"reset it when idle: `sudo nvidia-smi -r -i {gpu.index}` (or reboot the node)", ""))
        if gpu.pcie_width is not None and gpu.pcie_width_max and gpu.pcie_width < gpu.pcie_width_max:
            found.append(("warn", f"{name}: PCIe link x{gpu.pcie_width}, below its x{gpu.pcie_width_max} "
                          f"(host-device copies run at a fraction)",
                          "ask the provider to reseat the card or its riser, naming the bus id", ""))
        elif gpu.pcie_gen is not None and gpu.pcie_gen_max and gpu.pcie_gen < gpu.pcie_gen_max and not gpu.idle:
            found.append(("warn", f"{name}: PCIe Gen{gpu.pcie_gen} while busy, below its Gen{gpu.pcie_gen_max}",
                          "ask the provider to check the slot and BIOS PCIe settings, naming the bus id", ""))
        if gpu.slowdown:
            found.append(("warn", f"{name}: clocks held down by the hardware ({', '.join(gpu.slowdown)})",
                          "check cooling and power (`nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER`); "
                          "ask the provider if it persists", ""))
        if gpu.nvlinks_down:
            links = ", ".join(str(n) for n in gpu.nvlinks_down)
            found.append(("FAIL", f"{name}: NVLink link(s) {links} of its {gpu.nvlinks} are down (NCCL sends that "
                          f"GPU's traffic the slower way, or a job across them hangs; an Xid 74 often came with it)",
                          f"reset it when idle (`sudo nvidia-smi -r -i {gpu.index}`); if they stay down, "
                          + REPLACE.format(node=node, evidence=f"`nvidia-smi nvlink -s -i {gpu.index}` of it"), ""))
        if gpu.persistence is False:
            found.append(("warn", f"{name}: persistence mode is off (each job pays the driver's start-up, and "
                          f"settings reset)", "`sudo nvidia-smi -pm 1` on the node", ""))
    if info.kernel_log.startswith("not readable"):
        found.append(("info", f"Xid events not checked: the kernel log is {info.kernel_log}",
                      "run doctor as a user in the `adm` or `systemd-journal` group (or with passwordless sudo)", ""))
    return found


def fleet_findings(infos: Mapping[str, GpuHealthInfo]) -> list[tuple[tuple[str, ...], str, str]]:
    """A GPU model or memory size that differs from the rest of the fleet: (nodes, summary, remedy)."""
    kinds: dict[str, list[str]] = {}
    for node, info in infos.items():
        models = sorted({f"{g.name}, {g.memory_mib} MiB" if g.memory_mib else g.name for g in info.gpus})
        if models:
            kinds.setdefault(" + ".join(models), []).append(node)
    if len(kinds) < 2:
        return []
    common = max(kinds, key=lambda k: len(kinds[k]))
    return [(tuple(nodes), f"GPUs are {kind} here but {common} on {fold_nodes(kinds[common])}",
             "rent the same GPU everywhere, or leave these nodes out (`-n`): a synchronous job runs at the slowest's pace")
            for kind, nodes in kinds.items() if kind != common]
