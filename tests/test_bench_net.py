"""`trainfleet bench net` through real torch.distributed (gloo) on the sandbox."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import tf
from trainfleet.netbench import NetBenchResult, parse_size, size_ladder



def test_size_parsing_and_ladder() -> None:
    assert parse_size("1K") == 1024 and parse_size("256M") == 256 * 2**20 and parse_size("64MiB") == 64 * 2**20
    assert size_ladder(1024, 256 * 2**20)[:3] == [1024, 4096, 16384] and size_ladder(1024, 256 * 2**20)[-1] == 2**28
    assert size_ladder(1000, 5000) == [1000, 4000, 5000]


def test_result_lines_are_parsed_and_the_slowest_link_named() -> None:
    result = NetBenchResult()
    assert not result.take("[node0:0] step 1")
    for line in [
        '[node0:0] TFBENCH {"op": "setup", "backend": "gloo", "world": 2}',
        '[node0:0] TFBENCH {"op": "allreduce", "bytes": 1024, "seconds": 0.001, "iters": 5, "algbw": 1024000.0, '
        '"busbw": 1024000.0, "world": 2}',
        '[node0:0] TFBENCH {"op": "p2p", "src": "a", "dst": "b", "bytes": 8, "seconds": 1, "gbit_s": 5.0}',
        '[node0:0] TFBENCH {"op": "p2p", "src": "b", "dst": "a", "bytes": 8, "seconds": 1, "gbit_s": 2.5}',
    ]:
        assert result.take(line)
    assert result.slowest_link() == {"src": "b", "dst": "a", "bytes": 8, "seconds": 1, "gbit_s": 2.5}
    text = result.render()
    assert "slowest link: b -> a at 2.50 Gbit/s" in text and "1 KiB" in text


@pytest.mark.slow
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
