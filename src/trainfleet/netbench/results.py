"""`trainfleet bench net`: run the all-reduce / point-to-point job and present its numbers."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainfleet.errors import UsageError

JOB_DIR = Path(__file__).resolve().parent / "job"
REMOTE_JOB_DIR = ".trainfleet/bench"
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise UsageError(f"size {text!r} is not understood", fix="write it like 1K, 64M or 1G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def size_ladder(smallest: int, largest: int, factor: int = 4) -> list[int]:
    if smallest < 4 or largest < smallest:
        raise UsageError("sizes must satisfy 4 <= --min-size <= --max-size")
    sizes, size = [], smallest
    while size <= largest:
        sizes.append(size)
        size *= factor
    if sizes[-1] != largest:
        sizes.append(largest)
    return sizes


def human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1024
    return f"{size} B"


@dataclass
class NetBenchResult:
    backend: str = "?"
    world: int = 0
    allreduce: list[dict[str, float]] = field(default_factory=list)
    p2p: list[dict[str, object]] = field(default_factory=list)

    node_names: list[str] = field(default_factory=list)

    def take(self, line: str) -> bool:
        """Absorb one `TFBENCH {...}` line from rank 0; False for any other line."""
        marker = line.find("TFBENCH ")
        if marker < 0:
            return False
        record = json.loads(line[marker + len("TFBENCH "):])
        op = record.pop("op")
        if op == "setup":
            self.backend, self.world = record["backend"], record["world"]
        elif op == "allreduce":
            self.allreduce.append(record)
        elif op == "p2p":
            for end in ("src", "dst"):  # node ranks, named as in the fleet
                index = int(record[end])
                record[end] = self.node_names[index] if index < len(self.node_names) else f"node-rank-{index}"
            self.p2p.append(record)
        return True

    def slowest_link(self) -> dict[str, object] | None:
        return min(self.p2p, key=lambda r: float(r["gbit_s"])) if self.p2p else None  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        return {"backend": self.backend, "world": self.world, "allreduce": self.allreduce, "p2p": self.p2p,
                "slowest_link": self.slowest_link()}

    def render(self) -> str:
        lines = [f"all-reduce, {self.world} rank(s), backend {self.backend} (busbw = algbw x 2(n-1)/n)",
                 f"{'size':>10} {'time':>10} {'algbw GB/s':>11} {'busbw GB/s':>11} {'iters':>6}"]
        for r in self.allreduce:
            lines.append(f"{human(r['bytes']):>10} {r['seconds'] * 1e3:>8.2f}ms {r['algbw'] / 1e9:>11.3f} "
                         f"{r['busbw'] / 1e9:>11.3f} {int(r['iters']):>6}")
        if self.p2p:
            nodes = list(dict.fromkeys([str(r["src"]) for r in self.p2p] + [str(r["dst"]) for r in self.p2p]))
            cell = {(r["src"], r["dst"]): float(r["gbit_s"]) for r in self.p2p}  # type: ignore[arg-type]
            width = max(8, *(len(n) for n in nodes)) + 1
            lines += ["", f"point-to-point Gbit/s ({human(float(self.p2p[0]['bytes']))} per transfer; row sends)",
                      " " * width + "".join(f"{n:>{width}}" for n in nodes)]
            for src in nodes:
                lines.append(f"{src:<{width}}" + "".join(
                    f"{'-':>{width}}" if src == dst else f"{cell.get((src, dst), float('nan')):>{width}.2f}"
                    for dst in nodes))
            slow = self.slowest_link()
            assert slow is not None
            lines.append(f"slowest link: {slow['src']} -> {slow['dst']} at {float(slow['gbit_s']):.2f} Gbit/s")  # type: ignore[arg-type]
        return "\n".join(lines)


def job_args(sizes: Sequence[int], p2p_bytes: int, min_iters: int, seconds_per_size: float) -> tuple[str, ...]:
    return ("--sizes", ",".join(str(s) for s in sizes), "--p2p-bytes", str(p2p_bytes),
            "--min-iters", str(min_iters), "--seconds-per-size", str(seconds_per_size))
