"""`doctor --deep`: the nodes' reports read, and the slow or broken device named by its
distance from the fleet's median; the burn itself, run here on this machine's CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trainfleet.doctor.deep import Device, burn_command, findings, parse


def test_the_burn_runs_and_reports_what_it_measured() -> None:
    pytest.importorskip("torch")  # (the controller alone, as test_pythons installs it, has none: the nodes do)
    done = subprocess.run(burn_command(sys.executable, 0.3), shell=True, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [device] = parse("here", done.stdout)  # type: ignore[misc]
    assert (device.device, device.name, device.error) == ("cpu", "one CPU core", "")
    assert device.values["tflops"] > 0 and set(device.values) == {"tflops"}
    assert parse("here", "no result\n") is None


def gpu(node: str, index: int, tflops: float, h2d: float = 50.0, error: str = "") -> Device:
    return Device(node=node, device=f"GPU {index}", name="NVIDIA H100 80GB HBM3", error=error,
                  values={} if error else {"tflops": tflops, "h2d_gbps": h2d, "d2h_gbps": 50.0})


def test_a_slow_gpu_a_slow_copy_and_a_broken_gpu_are_named() -> None:
    devices = [gpu("node0", i, 700.0) for i in range(4)] + [gpu("node1", 0, 690.0), gpu("node1", 1, 520.0),
                                                             gpu("node1", 2, 300.0), gpu("node1", 3, 700.0, h2d=12.0),
                                                             gpu("node2", 0, 0.0, error="RuntimeError: CUDA error: "
                                                                                       "unspecified launch failure")]
    said = findings(devices)
    bad = [(v, n, s) for v, n, s, _ in said if v != "info"]
    assert ("FAIL", ("node2",), "GPU 0 (NVIDIA H100 80GB HBM3) failed its burn: RuntimeError: CUDA error: unspecified "
                                "launch failure") in bad
    assert ("warn", ("node1",), "GPU 1 (NVIDIA H100 80GB HBM3): matmul at 520 TFLOPS, 26% below the fleet's median "
                                "(700 TFLOPS)") in bad
    assert ("FAIL", ("node1",), "GPU 2 (NVIDIA H100 80GB HBM3): matmul at 300 TFLOPS, 57% below the fleet's median "
                                "(700 TFLOPS)") in bad
    assert ("FAIL", ("node1",), "GPU 3 (NVIDIA H100 80GB HBM3): host-to-device copies at 12 GB/s, 76% below the "
                                "fleet's median (50 GB/s)") in bad
    assert len(bad) == 4  # GPU 0 of node1 (1% below) is no news
    assert ("info", ("node0", "node1"), "NVIDIA H100 80GB HBM3: matmul median 700 TFLOPS over 8 device(s)", "") in said
