"""Metrics read from the output jobs already print, and the pictures drawn from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import tf
from trainfleet.errors import UsageError
from trainfleet.netbench_results import NetBenchResult
from trainfleet.plots import bandwidth_heatmap, metric_plot
from trainfleet.supervise.metrics import collect, last_values, parse_line


@pytest.mark.parametrize("line, expected", [
    # the example (examples/charlm/train.py)
    ("step 40 loss 2.4811 tokens/s 5120", {"step": 40, "loss": 2.4811, "tokens/s": 5120}),
    # nanoGPT's train.py
    ("iter 20: loss 2.3012, time 35.21ms, mfu 1.23%", {"step": 20, "loss": 2.3012, "time": 35.21, "mfu": 1.23}),
    # HF Trainer's log dicts
    ("{'loss': 2.31, 'grad_norm': 1.7, 'learning_rate': 5e-05, 'epoch': 0.5}",
     {"loss": 2.31, "grad_norm": 1.7, "learning_rate": 5e-05, "epoch": 0.5}),
    # DeepSpeed's
    ("steps: 10 loss: 2.3100 iter time (s): 0.210 samples/sec: 76.1", {"step": 10, "loss": 2.31}),
    # PyTorch examples' (epoch, batch): the step is the line's order
    ("[1,   125] loss: 2.301", {"loss": 2.301}),
    ("step=7 loss=1.5 lr=3e-4", {"step": 7, "loss": 1.5, "lr": 3e-4}),
    # never metrics: no known name among the numbers
    ("rank 0 of 4 on node0 pid 12 sum 4", {}),
    ("training 1234 parameters on 4 rank(s), backend gloo", {}),
    ("[W1202 00:05:29.649164532 socket.cpp:207] [c10d] The hostname of the client socket", {}),
])
def test_common_forms_are_read(line: str, expected: dict[str, float]) -> None:
    found = parse_line(line)
    assert {k: found[k] for k in expected} == pytest.approx(expected) and (found == {}) == (expected == {})


def test_a_pattern_reads_any_other_form() -> None:
    pattern = re.compile(r"it (?P<step>\d+) l=(?P<loss>\S+)")
    assert parse_line("it 3 l=0.25 (best)", pattern) == {"step": 3.0, "loss": 0.25}
    assert parse_line("step 3 loss 0.25", pattern) == {}


def test_series_per_rank_with_steps_from_the_lines_or_their_order() -> None:
    lines = ["[node0:0] step 1 loss 3.0", "[node0] launcher chatter", "[node0:0] step 2 loss 2.0",
             "[node1:2] [1,  10] loss: 2.5", "[node1:2] [1,  20] loss: 2.4"]
    series = collect(lines)
    assert series[("node0", 0)].points == {"loss": [(1.0, 3.0), (2.0, 2.0)]}
    assert series[("node1", 2)].points == {"loss": [(1.0, 2.5), (2.0, 2.4)]}
    assert last_values(series) == {"loss": 2.0}  # rank 0's


def png_pixels(path: Path):  # type: ignore[no-untyped-def]
    from matplotlib import image

    return image.imread(str(path))


def test_metric_plot_is_a_readable_png(tmp_path: Path) -> None:
    lines = [f"[node{r // 2}:{r}] step {s} loss {3.0 / s + r * 0.01:.4f}" for s in range(1, 41) for r in range(4)]
    out = tmp_path / "loss.png"
    assert metric_plot(collect(lines), "loss", "loss of job tf-x (fleet.yaml)", out) == 4
    pixels = png_pixels(out)
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 700 and pixels.std() > 0.05  # drawn, not blank
    with pytest.raises(UsageError) as refused:
        metric_plot(collect(lines), "accuracy", "t", tmp_path / "acc.png")
    assert "no rank printed 'accuracy'; fix: pick one of: loss" in refused.value.one_line()


def test_bandwidth_heatmap_names_the_slowest_link(tmp_path: Path) -> None:
    result = NetBenchResult(node_names=["node0", "node1", "node2"])
    for src in range(3):
        for dst in range(3):
            if src != dst:
                speed = 0.4 if (src, dst) == (2, 0) else 9.5
                result.take(f'TFBENCH {{"op": "p2p", "src": {src}, "dst": {dst}, "bytes": 1048576, "gbit_s": {speed}}}')
    out = tmp_path / "net.png"
    bandwidth_heatmap(result, "point-to-point bandwidth, fleet.yaml", out)
    pixels = png_pixels(out)
    assert pixels.shape[0] >= 400 and pixels.std() > 0.05
    svg = tmp_path / "net.svg"
    bandwidth_heatmap(result, "point-to-point bandwidth, fleet.yaml", svg)
    assert svg.read_text().startswith("<?xml") and svg.stat().st_size > 10_000


def test_plot_command_reads_the_logs_run_kept(tmp_path: Path) -> None:
    logs = tmp_path / "trainfleet-runs" / "tf-abc"
    logs.mkdir(parents=True)
    (logs / "node0.log").write_text("".join(f"[node0:0] step {s} loss {1 / s:.3f}\n" for s in range(1, 20)))
    done = tf("plot", "tf-abc", "--log-dir", str(tmp_path / "trainfleet-runs"), "-o", str(tmp_path / "l.png"))
    assert done.returncode == 0 and "wrote" in done.stderr and (tmp_path / "l.png").stat().st_size > 10_000, done.stderr
    bad = tf("plot", "tf-abc", "--log-dir", str(tmp_path / "trainfleet-runs"), "-o", str(tmp_path / "l.jpg"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "name the file .png or .svg" in bad.stderr
