"""`bench net`'s numbers: sizes, and the lines its job prints."""

from __future__ import annotations

from trainfleet.netbench.results import NetBenchResult, parse_size, size_ladder


def test_size_parsing_and_ladder() -> None:
    assert parse_size("1K") == 1024 and parse_size("256M") == 256 * 2**20 and parse_size("64MiB") == 64 * 2**20
    assert size_ladder(1024, 256 * 2**20)[:3] == [1024, 4096, 16384] and size_ladder(1024, 256 * 2**20)[-1] == 2**28
    assert size_ladder(1000, 5000) == [1000, 4000, 5000]


def test_result_lines_are_parsed_and_the_slowest_link_named() -> None:
    result = NetBenchResult(node_names=["a", "b"])
    assert not result.take("[node0:0] step 1")
    for line in [
        '[node0:0] TFBENCH {"op": "setup", "backend": "gloo", "world": 2}',
        '[node0:0] TFBENCH {"op": "allreduce", "bytes": 1024, "seconds": 0.001, "iters": 5, "algbw": 1024000.0, '
        '"busbw": 1024000.0, "world": 2}',
        '[node0:0] TFBENCH {"op": "p2p", "src": 0, "dst": 1, "bytes": 8, "seconds": 1, "gbit_s": 5.0}',
        '[node0:0] TFBENCH {"op": "p2p", "src": 1, "dst": 0, "bytes": 8, "seconds": 1, "gbit_s": 2.5}',
    ]:
        assert result.take(line)
    assert result.slowest_link() == {"src": "b", "dst": "a", "bytes": 8, "seconds": 1, "gbit_s": 2.5}
    text = result.render()
    assert "slowest link: b -> a at 2.50 Gbit/s" in text and "1 KiB" in text
