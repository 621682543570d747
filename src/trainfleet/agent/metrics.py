"""Training metrics read from the lines a job already prints: no change to the user's script.

Part of the node agent (stdlib only, Python 3.8): the nodes read the latest values for
`status` and steps/s for `top` from their logs, and the controller reads whole series for
`plot` and the dashboard, with the same parser.

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
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

KNOWN = {"loss", "train_loss", "eval_loss", "val_loss", "lr", "learning_rate", "tokens/s", "tok/s", "samples/s",
         "samples_per_second", "train_samples_per_second", "throughput", "mfu", "ppl", "perplexity", "grad_norm",
         "accuracy", "acc", "step_time", "time", "dt", "it/s"}
"""Names that make a line a metrics line."""
STEP_NAMES = ("global_step", "step", "iter", "iteration", "steps")
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
QUALIFIER = r"(?:(train|training|val|valid|validation|eval|test)[ _])?"
"""nanoGPT's `step 2000: train loss 1.07, val loss 1.48`: two losses, named train_loss and val_loss."""
PAIR = re.compile(r"(?<![\w/])" + QUALIFIER + r"([A-Za-z_][\w/.]*?)\s*(?:=|:\s*|\s+)(" + NUMBER +
                  r")(?:\s*(ms|s|%))?(?![\w.])")
HF_DICT = re.compile(r"\{\s*'[^{}]+\}")
RANK_LINE = re.compile(r"^\[(?P<node>[^\]:\s]+)(?::(?P<rank>\d+))?\] ?(?P<text>.*)$")
"""A line as trainfleet shows and logs it: `[node:rank] text`, or `[node] text` where the
launcher does not mark ranks (a command, mpirun); such a line's rank reads as -1."""


def parse_line(text: str, pattern: Optional[re.Pattern] = None) -> Dict[str, float]:
    """The metrics in one line of output (its step under "step" when it names one); {} for none."""
    if pattern is not None:
        found = pattern.search(text)
        if not found:
            return {}
        return {k: float(v) for k, v in found.groupdict().items() if v is not None and _number(v)}
    values: Dict[str, float] = {}
    for dict_text in HF_DICT.findall(text):
        try:
            parsed = ast.literal_eval(dict_text)
        except (ValueError, SyntaxError):
            continue
        if isinstance(parsed, dict):  # transformers 5 logs the numbers as strings: {'loss': '5.378', ...}
            values.update({str(k): float(v) for k, v in parsed.items()
                           if (isinstance(v, (int, float)) and not isinstance(v, bool)) or
                           (isinstance(v, str) and _number(v))})
    if not values:
        for qualifier, key, number, _unit in PAIR.findall(text):
            name = key.lower().rstrip(":.")
            values.setdefault(f"{qualifier.lower()}_{name}" if qualifier else name, float(number))
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

    points: Dict[str, List[Tuple[float, float]]] = field(default_factory=dict)
    lines: int = 0

    def add(self, values: Dict[str, float]) -> None:
        self.lines += 1
        step = values.get("step", float(self.lines))
        for name, value in values.items():
            if name != "step":
                self.points.setdefault(name, []).append((step, value))


def collect(lines: Iterable[str], pattern: Optional[re.Pattern] = None) -> Dict[Tuple[str, int], Series]:
    """Metrics per (node, rank) from `[node:rank] text` lines (a log file or the live stream);
    `[node] text` lines count as rank -1 of their node."""
    found: Dict[Tuple[str, int], Series] = {}
    for line in lines:
        marked = RANK_LINE.match(line.rstrip("\n"))
        if not marked:
            continue
        values = parse_line(marked.group("text"), pattern)
        if values:
            rank = int(marked.group("rank")) if marked.group("rank") is not None else -1
            found.setdefault((marked.group("node"), rank), Series()).add(values)
    return found


def last_values(series: Dict[Tuple[str, int], Series]) -> Dict[str, float]:
    """Each metric's latest value, from the lowest rank that prints it (what `status` shows)."""
    latest: Dict[str, float] = {}
    for key in sorted(series, key=lambda k: k[1], reverse=True):
        for name, points in series[key].points.items():
            latest[name] = points[-1][1]
    return latest


def latest_on_node(lines: List[Tuple[float, str]]) -> Tuple[Dict[str, float], Optional[float]]:
    """From a node's log lines (`[tf:rankN] text`, the newest last): each metric's latest
    value, from the lowest rank that prints it, and the steps per second over the last
    minute of the lowest rank that prints a step."""
    from .rankwrap import RANK_LINE as MARKED

    latest: Dict[str, Tuple[int, float]] = {}
    steps: Dict[int, List[Tuple[float, float]]] = {}
    for moment, text in lines:
        marked = MARKED.match(text)
        # An unmarked line (a launcher's, or any line of a job whose ranks are not marked)
        # counts after every rank's.
        rank, body = (int(marked.group(1)), marked.group(2)) if marked else (1 << 30, text)
        values = parse_line(body)
        for name, value in values.items():
            if name != "step" and (name not in latest or rank <= latest[name][0]):
                latest[name] = (rank, value)
        if "step" in values:
            steps.setdefault(rank, []).append((moment, values["step"]))
    rate = None
    if steps:
        seen = steps[min(steps)]
        recent = [(t, n) for t, n in seen if t >= seen[-1][0] - 60]
        if len(recent) >= 2 and recent[-1][0] > recent[0][0] and recent[-1][1] > recent[0][1]:
            rate = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
    return {name: value for name, (_, value) in latest.items()}, rate
