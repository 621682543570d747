"""`trainfleet bench net` through real torch.distributed (gloo) on the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import tf



def test_bench_net_on_three_nodes(fleet3: Path, tmp_path: Path) -> None:
    completed = tf("bench", "net", "-f", str(fleet3), "--max-size", "64K", "--p2p-size", "256K",
                   "--seconds-per-size", "0", "--json", timeout=240, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    assert report["backend"] == "gloo" and report["world"] == 3
    assert [r["bytes"] for r in report["allreduce"]] == [1024, 4096, 16384, 65536]
    for row in report["allreduce"]:
        assert row["busbw"] == pytest.approx(row["algbw"] * 2 * 2 / 3) and row["seconds"] > 0
    pairs = {(r["src"], r["dst"]) for r in report["p2p"]}
    assert pairs == {(a, b) for a in ("node0", "node1", "node2") for b in ("node0", "node1", "node2") if a != b}
    assert report["slowest_link"] in report["p2p"]
