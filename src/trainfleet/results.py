"""Per-node outcomes of one fleet operation, gathered into one value, and the one error
that a failed operation raises with its evidence (`FleetResult.require`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from trainfleet.errors import TrainfleetError

TAIL_LINES = 20
EVIDENCE_LINES = 8
"""Lines of a failed node's output that the CLI shows under the error (its log has all)."""
R = TypeVar("R")


@dataclass(frozen=True)
class NodeResult:
    """What one node did. `error` is set when the command never ran to an exit status."""

    node: str
    command: str
    exit_status: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_status == 0

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of its output: stderr's where it wrote any (the reason is there), else stdout's."""
        text = (self.stderr if self.stderr.strip() else self.stdout).rstrip("\n")
        return "\n".join(text.splitlines()[-lines:])

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node,
            "command": self.command,
            "exit_status": self.exit_status,
            "ok": self.ok,
            "error": self.error,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class FleetResult(Generic[R]):
    """Every node's outcome of one operation: a command's exit, or an agent request's
    typed answer (`answers`), or why there is none."""

    results: tuple[NodeResult, ...] = field(default_factory=tuple)
    answers: Mapping[str, R] = field(default_factory=dict)

    @property
    def failures(self) -> dict[str, NodeResult]:
        return {r.node: r for r in self.failed}

    def require(self, what: str, where: Where | None = None, *, fix: str | None = None) -> Mapping[str, R]:
        """The answers, or a FleetError naming every node that gave none, with each one's
        evidence; `where` (the fleet) lets the error name a fix for the usual causes."""
        if self.failed:
            raise FleetError(what, self, where, fix=fix)
        return self.answers

    @property
    def succeeded(self) -> tuple[NodeResult, ...]:
        return tuple(r for r in self.results if r.ok)

    @property
    def failed(self) -> tuple[NodeResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def ok(self) -> bool:
        return not self.failed

    def exit_code(self) -> int:
        """0 only when every node succeeded; else the first failing exit status (255 when none)."""
        for result in self.results:
            if not result.ok:
                status = result.exit_status
                return status if status and 0 < status < 256 else 255
        return 0

    def by_node(self) -> dict[str, NodeResult]:
        return {r.node: r for r in self.results}

    def grouped_failures(self) -> list[tuple[str, str]]:
        """(folded node set, reason) with identical reasons merged, as ClusterShell does."""
        groups: dict[str, list[str]] = {}
        for result in self.failed:
            reason = result.error or f"exit status {result.exit_status}"
            groups.setdefault(reason, []).append(result.node)
        return [(fold_nodes(nodes), reason) for reason, nodes in groups.items()]


class Where(Protocol):
    """What a fix needs to know of the fleet (the fleet itself fits)."""

    @property
    def python(self) -> str: ...

    @property
    def workdir(self) -> str: ...


PYTHON_FIX = ("set `python:` in the fleet file to the full path of the Python with torch on the nodes "
              "(`trainfleet doctor` looks for it in login shells too), or make it with `setup:` "
              "(e.g. `python3 -m venv ~/venv && ~/venv/bin/pip install torch`) and `trainfleet setup`")


class FleetError(TrainfleetError):
    """An operation failed on some nodes. `result` holds every node's outcome; the
    message names the failed nodes (folded where they failed alike) and why, `evidence()`
    each one's command, exit and output tail, and the fix is named for the usual causes
    (the fleet's Python missing, a full disk) when the caller gave none."""

    def __init__(self, what: str, result: FleetResult, where: Where | None = None, *,
                 fix: str | None = None) -> None:
        failed = result.failed
        missing = [r.node for r in failed if r.exit_status == 127]
        if where is not None and missing and len(missing) == len(failed):
            message = (f"{what}: `{where.python}` (the fleet's `python:`) was not found on {fold_nodes(missing)} "
                       f"by a non-interactive SSH shell")
            fix = fix or PYTHON_FIX
            failed = ()  # said whole: the shell's own "not found" would only repeat it
        else:
            reasons = "; ".join(f"{nodes}: {reason}" for nodes, reason in result.grouped_failures())
            message = f"{what}: {reasons}" if reasons else what
        full = [r.node for r in result.failed if "No space left on device" in f"{r.error} {r.stderr}"]
        if full and fix is None:
            workdir = f" (the workdir is {where.workdir})" if where is not None else ""
            fix = f"free space on {fold_nodes(full)}{workdir}; `trainfleet doctor` shows what is free where"
        super().__init__(message, fix=fix)
        self.result = result
        self.shown = failed
        """The failures whose evidence is worth showing under the message."""

    def evidence(self, lines: int = EVIDENCE_LINES) -> list[str]:
        """Per failed node that ran something (folded where nodes said the same): what ran,
        how it ended, and the last lines it printed, as Invoke's UnexpectedExit shows them."""
        groups: dict[tuple[str, str], list[str]] = {}
        for result in self.shown:
            if result.exit_status is None:
                continue  # nothing ran to an end (unreachable; a request that raised): the message says it
            command = result.command if len(result.command) <= 160 else result.command[:157] + "..."
            how = f"`{command}`: {result.error}" if result.error else f"`{command}` exited with status {result.exit_status}"
            groups.setdefault((how, result.tail(lines)), []).append(result.node)
        shown = []
        for (how, tail), nodes in groups.items():
            shown.append(f"{fold_nodes(nodes)}: {how}")
            shown += [f"  | {line}" for line in tail.splitlines() if tail.strip()]
        return shown


_SPLIT_NUMBER = re.compile(r"^(.*?)(\d+)$")
_BRACKETS = re.compile(r"^(?P<prefix>[^\[\]]*)\[(?P<ranges>[0-9,\-]+)\](?P<suffix>[^\[\]]*)$")


def expand_nodes(text: str) -> list[str]:
    """`node[0-2],gpu7` -> `node0,node1,node2,gpu7`: the inverse of `fold_nodes`.

    Commas inside brackets separate ranges, outside them names; zero padding is kept
    (`n[01-03]` -> n01, n02, n03). Raises ValueError on a malformed set."""
    names: list[str] = []
    depth, start = 0, 0
    parts = []
    for index, char in enumerate(text + ","):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
        if depth < 0 or depth > 1:
            raise ValueError(f"unbalanced brackets in {text!r}")
    if depth:
        raise ValueError(f"unbalanced brackets in {text!r}")
    for part in filter(None, parts):
        match = _BRACKETS.match(part)
        if "[" not in part:
            names.append(part)
            continue
        if not match:
            raise ValueError(f"cannot read node set {part!r}")
        for item in match.group("ranges").split(","):
            low, _, high = item.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise ValueError(f"cannot read range {item!r} in {part!r}")
            width = len(low) if low.startswith("0") and len(low) > 1 else 0
            for number in range(int(low), int(high or low) + 1):
                names.append(f"{match.group('prefix')}{number:0{width}d}{match.group('suffix')}")
    return list(dict.fromkeys(names))


def fold_nodes(names: Iterable[str]) -> str:
    """`node0,node1,node2,gpu7` -> `gpu7,node[0-2]` (zero-padded widths kept apart)."""
    prefixes: dict[tuple[str, int], list[int]] = {}
    plain: list[str] = []
    numbered: list[tuple[str, str]] = []
    for name in names:
        match = _SPLIT_NUMBER.match(name)
        if match:
            numbered.append((match.group(1), match.group(2)))
        else:
            plain.append(name)
    # n01 and n10 are one zero-padded series; n1 and n10 are one unpadded series.
    padded = {(prefix, len(digits)) for prefix, digits in numbered if len(digits) > 1 and digits[0] == "0"}
    for prefix, digits in numbered:
        width = len(digits) if (prefix, len(digits)) in padded else 0
        prefixes.setdefault((prefix, width), []).append(int(digits))
    parts = sorted(set(plain))
    for (prefix, width), numbers in sorted(prefixes.items()):
        numbers = sorted(set(numbers))
        if len(numbers) == 1:
            parts.append(f"{prefix}{numbers[0]:0{width}d}")
            continue
        ranges: list[str] = []
        start = prev = numbers[0]
        for number in numbers[1:] + [None]:  # type: ignore[list-item]
            if number is not None and number == prev + 1:
                prev = number
                continue
            ranges.append(f"{start:0{width}d}" if start == prev else f"{start:0{width}d}-{prev:0{width}d}")
            if number is not None:
                start = prev = number
        parts.append(f"{prefix}[{','.join(ranges)}]")
    return ",".join(parts)
