"""Training metrics read from the lines a job already prints: no change to the user's script.

Recognised forms (a line counts when it names a known metric, so `rank 0 of 4 pid 12`
is never taken for one):
- `key=value` and `key: value` pairs (`step=10 loss=2.31`, DeepSpeed's `steps: 10 loss: 2.31`);
- `key value` pairs (the example's `step 10 loss 2.3012 tokens/s 5120`, nanoGPT's
  `iter 20: loss 2.3012, time 35.21ms, mfu 1.23%`);
- the dicts HF Trainer logs (`{'loss': 2.31, 'learning_rate': 5e-05, 'epoch': 0.5}`);
- PyTorch examples' `[1,   125] loss: 2.301` (epoch and batch in brackets).
The step is `step`, `iter`, `iteration`, `global_step` or `steps` where the line has one,
else the count of metric lines so far (per rank). A `--metrics-pattern` regex with named
groups reads anything else: each group that holds a number is a metric.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

KNOWN = {"loss", "train_loss", "eval_loss", "val_loss", "lr", "learning_rate", "tokens/s", "tok/s", "samples/s",
         "samples_per_second", "train_samples_per_second", "throughput", "mfu", "ppl", "perplexity", "grad_norm",
         "accuracy", "acc", "step_time", "time", "dt", "it/s"}
"""Names that make a line a metrics line."""
STEP_NAMES = ("global_step", "step", "iter", "iteration", "steps")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
PAIR = re.compile(r"(?<![\w/])([A-Za-z_][\w/.]*?)\s*(?:=|:\s*|\s+)(" + NUMBER + r")(?:\s*(ms|s|%))?(?![\w.])")
HF_DICT = re.compile(r"\{\s*'[^{}]+\}")
RANK_LINE = re.compile(r"^\[(?P<node>[^\]:\s]+):(?P<rank>\d+)\] ?(?P<text>.*)$")
"""A rank's line as trainfleet shows and logs it: `[node:rank] text`."""


def parse_line(text: str, pattern: re.Pattern[str] | None = None) -> dict[str, float]:
    """The metrics in one line of output (its step under "step" when it names one); {} for none."""
    if pattern is not None:
        found = pattern.search(text)
        if not found:
            return {}
        return {k: float(v) for k, v in found.groupdict().items() if v is not None and _number(v)}
    values: dict[str, float] = {}
    for dict_text in HF_DICT.findall(text):
        try:
            parsed = ast.literal_eval(dict_text)
        except (ValueError, SyntaxError):
            continue
        if isinstance(parsed, dict):
            values.update({str(k): float(v) for k, v in parsed.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if not values:
        for key, number, _unit in PAIR.findall(text):
            values.setdefault(key.lower().rstrip(":."), float(number))
    if not any(k in KNOWN for k in values):
        return {}
    for name in STEP_NAMES:
        if name in values:
            values["step"] = values.pop(name)
            break
    return values


def _number(text: str) -> bool:
    return re.fullmatch(NUMBER, text.strip()) is not None


@dataclass
class Series:
    """Every metric of one rank, as (step, value) points in the order printed."""

    points: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    lines: int = 0

    def add(self, values: dict[str, float]) -> None:
        self.lines += 1
        step = values.get("step", float(self.lines))
        for name, value in values.items():
            if name != "step":
                self.points.setdefault(name, []).append((step, value))


def collect(lines: Iterable[str], pattern: re.Pattern[str] | None = None) -> dict[tuple[str, int], Series]:
    """Metrics per (node, rank) from `[node:rank] text` lines (a log file or the live stream)."""
    found: dict[tuple[str, int], Series] = {}
    for line in lines:
        marked = RANK_LINE.match(line.rstrip("\n"))
        if not marked:
            continue
        values = parse_line(marked.group("text"), pattern)
        if values:
            found.setdefault((marked.group("node"), int(marked.group("rank"))), Series()).add(values)
    return found


def last_values(series: dict[tuple[str, int], Series]) -> dict[str, float]:
    """Each metric's latest value, from the lowest rank that prints it (what `status` shows)."""
    latest: dict[str, float] = {}
    for key in sorted(series, key=lambda k: k[1], reverse=True):
        for name, points in series[key].points.items():
            latest[name] = points[-1][1]
    return latest
