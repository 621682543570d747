"""Metrics read from the output jobs already print, and the pictures drawn from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from helpers import tf
from trainfleet.errors import UsageError
from trainfleet.netbench.results import NetBenchResult
from trainfleet.cli.plots import bandwidth_heatmap, metric_plot
from trainfleet.agent.metrics import collect, last_values, parse_line


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


def test_a_restart_is_marked_where_the_steps_go_back(tmp_path: Path) -> None:
    from trainfleet.cli.plots import restart_steps

    # Steps 1..40, a node lost at 37, resumed from the checkpoint of step 30 (twice for one rank).
    steps = list(range(1, 38)) + list(range(30, 41))
    lines = [f"[node0:{r}] step {s} loss {3.0 / s:.4f}" for s in steps for r in range(2)]
    series = collect(lines)
    assert restart_steps(series, "loss") == [30.0]
    assert restart_steps(collect([f"[node0:0] step {s} loss 1.0" for s in range(1, 9)]), "loss") == []
    out = tmp_path / "restart.png"
    assert metric_plot(series, "loss", "t", out) == 2 and png_pixels(out).std() > 0.05


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


def test_a_node_reports_the_latest_values_of_its_lowest_rank_and_its_steps_per_second() -> None:
    from trainfleet.agent.metrics import latest_on_node
    from trainfleet.agent.rankwrap import rank_mark

    lines = [(100.0, rank_mark(1) + "step 10 loss 3.0 lr 0.1"), (101.0, rank_mark(0) + "step 10 loss 2.9"),
             (101.5, "some launcher line loss 9"), (103.0, rank_mark(0) + "step 20 loss 2.5"),
             (104.0, rank_mark(1) + "step 20 loss 2.6 lr 0.05"), (105.0, rank_mark(0) + "hello")]
    latest, rate = latest_on_node(lines)
    assert latest == {"loss": 2.5, "lr": 0.05}  # lr only rank 1 prints
    assert rate == 5.0  # rank 0: 10 steps in 2 s
    assert latest_on_node([]) == ({}, None)


CAPTURES = Path(__file__).resolve().parents[1] / "captures"
"""What `trainfleet run` showed of real jobs (tests/captures/README.md says how each was made)."""


def captured(name: str) -> list[str]:
    return (CAPTURES / name).read_text().splitlines()


def test_nanogpt_as_run_shows_it() -> None:
    series = collect(captured("nanogpt.txt"))
    assert list(series) == [("node0", -1)]  # the command launcher: one process, its lines unmarked
    points = series[("node0", -1)].points
    assert [step for step, _ in points["loss"]] == [float(i) for i in range(0, 41, 2)]
    assert points["loss"][0] == (0.0, 4.3116) and points["loss"][-1] == (40.0, 3.6593)
    assert len(points["time"]) == 21 and all(v > 0 for _, v in points["time"])  # ms per iteration
    # The evaluations: `step 20: train loss 3.9800, val loss 4.0001`.
    assert [step for step, _ in points["train_loss"]] == [0.0, 20.0, 40.0]
    assert [step for step, _ in points["val_loss"]] == [0.0, 20.0, 40.0]


def test_hf_trainer_as_run_shows_it() -> None:
    series = collect(captured("hf_trainer.txt"))
    assert sorted(series) == [("node0", 0), ("node1", 1)]
    for one in series.values():
        # transformers 5 logs its numbers as strings; the step is the line's order.
        assert [v for _, v in one.points["loss"]] == [5.378, 5.379, 5.38, 5.376, 5.38, 5.374]
        assert one.points["learning_rate"][0] == (1.0, 0.0004333)
        assert one.points["train_samples_per_second"][0][1] > 0  # the summary at the end
    assert last_values(series)["train_loss"] == 5.378


def test_deepspeed_as_run_shows_it() -> None:
    series = collect(captured("deepspeed.txt"))
    assert sorted(series) == [("node0", 0), ("node1", 1)]
    assert [v for _, v in series[("node0", 0)].points["loss"]] == [1.416, 1.386, 1.403, 1.436]
    assert [s for s, _ in series[("node0", 0)].points["loss"]] == [1.0, 2.0, 3.0, 4.0]


def test_the_example_as_the_demo_shows_it() -> None:
    series = collect(captured("charlm.txt"))
    loss = series[("node0", 0)].points["loss"]
    assert len(loss) >= 10 and loss[-1][1] < loss[0][1] and [s for s, _ in loss] == sorted(s for s, _ in loss)
    assert "tokens/s" in series[("node0", 0)].points
