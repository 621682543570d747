"""GPU health from `nvidia-smi -q -x` and the kernel log (tests/captures/README.md says
what these files are), and doctor's findings from it: pure."""

from __future__ import annotations

from pathlib import Path

from trainfleet.agent.gpu_health import parse_smi_xml, parse_xids, same_bus
from trainfleet.agent.protocol import GpuHealthInfo
from trainfleet.doctor.gpu_health import fleet_findings, node_findings

CAPTURES = Path(__file__).resolve().parents[1] / "captures"


def test_driver_535_names_and_both_gpus_read() -> None:
    healthy, sick = parse_smi_xml((CAPTURES / "nvidia-smi-q-x-535.xml").read_text())
    assert (healthy.index, healthy.bus_id, healthy.name, healthy.memory_mib) == \
        ("0", "00000000:18:00.0", "NVIDIA H100 80GB HBM3", 81559)
    assert healthy.persistence and healthy.idle and healthy.ecc_uncorrected == 0 and not healthy.slowdown
    assert (healthy.pcie_gen, healthy.pcie_gen_max, healthy.pcie_width, healthy.pcie_width_max) == (5, 5, 16, 16)
    assert healthy.retired_pending is None and healthy.remap_pending is False  # N/A is not "no"
    assert sick.persistence is False and not sick.idle and sick.pcie_width == 8 and sick.ecc_uncorrected == 1
    assert sick.slowdown == ["hw_slowdown", "hw_thermal_slowdown"] and sick.remap_pending is True


def test_driver_470_names_are_read_too() -> None:
    [gpu] = parse_smi_xml((CAPTURES / "nvidia-smi-q-x-470.xml").read_text())
    assert gpu.name == "Tesla V100-SXM2-16GB" and gpu.idle and not gpu.slowdown
    assert gpu.ecc_uncorrected == 0 and gpu.retired_pending is True and gpu.remap_pending is None


def test_xid_lines_from_dmesg_and_the_journal() -> None:
    events = parse_xids((CAPTURES / "kernel-xid.log").read_text())
    assert [(e.xid, e.bus_id) for e in events] == [(13, "0000:2a:00"), (13, "0000:2a:00"), (79, "0000:2a:00"),
                                                   (63, "0000:18:00"), (94, "0000:18:00")]
    assert events[2].when == "201733.100012" and events[3].when.startswith("Nov 12 09:13:55 gpu-node-7")
    assert same_bus("0000:2a:00", "00000000:2A:00.0") and not same_bus("0000:2a:00", "00000000:18:00.0")


def findings(info: GpuHealthInfo) -> list[tuple[str, str]]:
    return [(verdict, summary) for verdict, summary, _, _ in node_findings("gpu3", info)]


def test_doctor_names_hardware_xids_by_gpu_and_lets_the_jobs_own_pass() -> None:
    gpus = parse_smi_xml((CAPTURES / "nvidia-smi-q-x-535.xml").read_text())
    info = GpuHealthInfo(gpus=gpus, xids=parse_xids((CAPTURES / "kernel-xid.log").read_text()), kernel_log="dmesg")
    said = findings(info)
    fails = [s for v, s in said if v == "FAIL"]
    assert any(s.startswith("GPU 1 (bus 00000000:2a:00.0, GPU-9e8d7c6b") and "Xid 79, fallen off the bus 201733 s "
               "after boot (hardware)" in s for s in fails), fails
    assert any("GPU 0 (bus 00000000:18:00.0" in s and "Xid 94, contained ECC error" in s for s in fails)
    assert any("GPU 1 " in s and "1 uncorrected ECC error(s)" in s for s in fails)
    infos = [s for v, s in said if v == "info"]
    assert len([s for s in infos if "Xid 13" in s]) == 1 and "a job's fault, not the GPU's" in infos[0]
    warns = [s for v, s in said if v == "warn"]
    for text in ("PCIe link x8, below its x16", "clocks held down by the hardware (hw_slowdown, hw_thermal_slowdown)",
                 "persistence mode is off", "a row remap is pending"):
        assert any(text in s for s in warns), (text, warns)
    [(_, _, remedy, evidence)] = [f for f in node_findings("gpu3", info) if "Xid 79" in f[1]]
    assert "sudo nvidia-smi -r -i 1" in remedy and "trainfleet cordon gpu3" in remedy and "Xid" in evidence


def test_a_healthy_idle_gpu_says_nothing_and_an_unreadable_log_is_said() -> None:
    [healthy, _] = parse_smi_xml((CAPTURES / "nvidia-smi-q-x-535.xml").read_text())
    assert findings(GpuHealthInfo(gpus=[healthy], kernel_log="dmesg")) == []
    [(verdict, summary)] = findings(GpuHealthInfo(gpus=[healthy], kernel_log="not readable (dmesg: Operation "
                                                                              "not permitted)"))
    assert verdict == "info" and "Xid events not checked" in summary


def test_a_gpu_model_that_differs_from_the_fleet_is_named() -> None:
    h100 = parse_smi_xml((CAPTURES / "nvidia-smi-q-x-535.xml").read_text())
    v100 = parse_smi_xml((CAPTURES / "nvidia-smi-q-x-470.xml").read_text())
    infos = {"gpu0": GpuHealthInfo(gpus=h100), "gpu1": GpuHealthInfo(gpus=h100), "gpu2": GpuHealthInfo(gpus=v100)}
    [(nodes, summary, _)] = fleet_findings(infos)
    assert nodes == ("gpu2",) and "Tesla V100-SXM2-16GB, 16160 MiB here but NVIDIA H100 80GB HBM3, 81559 MiB on " \
        "gpu[0-1]" in summary
    assert fleet_findings({"gpu0": GpuHealthInfo(gpus=h100), "gpu1": GpuHealthInfo(gpus=h100)}) == []


def test_an_nvlink_link_that_is_down_is_named_on_its_gpu() -> None:
    from trainfleet.agent.gpu_health import parse_nvlinks
    from trainfleet.agent.protocol import GpuHealth

    links = parse_nvlinks((CAPTURES / "nvidia-smi-nvlink-s.txt").read_text())
    first, second = "GPU-4f1e2b3c-0000-4000-8000-000000000001", "GPU-4f1e2b3c-0000-4000-8000-000000000002"
    assert links == {first: (4, [3]), second: (4, [])}  # (the PCIe GPU lists no link: left out)
    gpu = GpuHealth(index="0", uuid=first, bus_id="00000000:18:00.0", name="NVIDIA H100 80GB HBM3", nvlinks=4,
                    nvlinks_down=[3])
    [(verdict, summary, fix, _)] = node_findings("node1", GpuHealthInfo(gpus=[gpu], kernel_log="dmesg"))
    assert verdict == "FAIL" and summary.endswith("NVLink link(s) 3 of its 4 are down (NCCL sends that GPU's traffic "
                                                  "the slower way, or a job across them hangs; an Xid 74 often came "
                                                  "with it)")
    assert "sudo nvidia-smi -r -i 0" in fix and "`nvidia-smi nvlink -s -i 0`" in fix
