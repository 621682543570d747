"""`trainfleet setup`: the fleet file's `setup:` commands, in the project's directory on
every node at once, once.

The commands run as a job under each node's supervisor (so a lost connection does not
leave a half-run `pip install` behind, and the node keeps the full output). A node where
the same setup already succeeded is skipped: "the same" is a digest of the commands and
of the project files they name (requirements.txt, a lock file, a Makefile).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainfleet.agent.procs import JOB_VARIABLE
from trainfleet.agent.protocol import FactSection, JobState, JobStatus, LaunchRequest, OutputEvent, decode
from trainfleet.plans.containers import absolute, container_name, remove_argv, setup_argv
from trainfleet.errors import UsageError
from trainfleet.fleet.model import Fleet, Node
from trainfleet.launchers.base import python_path
from trainfleet.ops.common import facts_request
from trainfleet.ops.sync import Project, check_code, sync
from trainfleet.transport.agent_client import AgentError, AgentFailed
from trainfleet.transport.session import FleetSession

STEP_MARK = "[setup "


@dataclass(frozen=True)
class SetupOutcome:
    digest: str
    states: dict[str, JobState] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()
    lost: dict[str, str] = field(default_factory=dict)
    """Nodes whose setup could not be followed to its end, and why."""
    tails: dict[str, list[str]] = field(default_factory=dict)
    steps: dict[str, str] = field(default_factory=dict)
    """The step each node announced last (`2/3] pip install ...`): where a failed one stopped."""

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.states.items() if s.state != JobStatus.SUCCEEDED] + list(self.lost)


def named_files(fleet: Fleet, source: Path) -> list[str]:
    """The project files the setup depends on: listed in `files:`, or named by a command."""
    found = list(fleet.setup.files)
    for command in fleet.setup.commands:
        try:
            words = shlex.split(command)
        except ValueError:
            words = command.split()
        for word in words:
            word = word.strip(";&|()<>")  # `pip install -r requirements.txt; make`
            for candidate in (word, word.split("=", 1)[-1]):
                if candidate and not candidate.startswith("-") and (source / candidate).is_file():
                    found.append(candidate)
    return sorted(set(found))


def setup_digest(fleet: Fleet, source: Path) -> str:
    digest = hashlib.sha256("\n".join(fleet.setup.commands).encode())
    for name in named_files(fleet, source):
        path = source / name
        if not path.is_file():
            raise UsageError(f"{fleet.source}: setup.files: {name} is not a file in {source}")
        digest.update(b"\0" + name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def setup_script(commands: tuple[str, ...], digest: str) -> str:
    """Each command in turn, announced; stop at the first failure; the stamp at the end."""
    lines = ["set -e"]
    for index, command in enumerate(commands, start=1):
        lines.append(f"printf '%s\\n' {shlex.quote(f'{STEP_MARK}{index}/{len(commands)}] {command}')}")
        lines.append(command)
    stamp = shlex.quote(f'{{"digest": "{digest}"}}')
    lines.append(f"mkdir -p .trainfleet && printf '%s' {stamp} > .trainfleet/setup.json.tmp "
                 f"&& mv .trainfleet/setup.json.tmp .trainfleet/setup.json")
    return "\n".join(lines) + "\n"


async def stale_nodes(session: FleetSession, project: Project) -> list[str]:
    """Nodes where the current setup has not succeeded yet (none when there is no setup)."""
    fleet = session.fleet
    if not fleet.setup.commands:
        return []
    digest = setup_digest(fleet, project.source)
    replies = await session.call_all(facts_request(fleet, [FactSection.PROJECT], project=project.name), timeout=30)
    replies.require("cannot check the setup", fleet)
    return [n for n, facts in replies.answers.items() if facts.project is None or facts.project.setup != digest]


async def node_homes_and_gpus(session: FleetSession, nodes: list[str]) -> tuple[dict[str, str], dict[str, int]]:
    fleet = session.fleet
    replies = await session.call_all(facts_request(fleet, [FactSection.GPU]), [n for n in session.nodes if n.name in nodes],
                                     timeout=60)
    replies.require("cannot run setup", fleet)
    return ({n: a.home for n, a in replies.answers.items()},
            {n: len(a.gpu.gpus) if a.gpu else 0 for n, a in replies.answers.items()})


async def run_setup(session: FleetSession, project: Project, *, force: bool, secrets: Mapping[str, str],
                    log_dir: Path, on_step: Callable[[str, str], None]) -> SetupOutcome:
    fleet = session.fleet
    if not fleet.setup.commands:
        raise UsageError(f"{fleet.source} has no `setup:` commands",
                         fix="add e.g. `setup: [pip install -r requirements.txt]` to the fleet file")
    digest = setup_digest(fleet, project.source)
    todo = [n.name for n in session.nodes] if force else await stale_nodes(session, project)
    skipped = tuple(n.name for n in session.nodes if n.name not in todo)
    job_id = f"setup-{digest[:8]}-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    log_dir.mkdir(parents=True, exist_ok=True)
    tails: dict[str, list[str]] = {n: [] for n in todo}
    steps: dict[str, str] = {}
    states: dict[str, JobState] = {}
    lost: dict[str, str] = {}
    script = setup_script(fleet.setup.commands, digest)
    homes, gpus = await node_homes_and_gpus(session, todo) if fleet.container is not None else ({}, {})

    async def one(node: str) -> None:
        with open(log_dir / f"{node}.log", "w", buffering=1) as log:
            def take(event: dict[str, Any]) -> None:
                for _, text in decode(OutputEvent, event).lines:
                    log.write(text + "\n")
                    tails[node] = (tails[node] + [text])[-20:]
                    if text.startswith(STEP_MARK):
                        steps[node] = text[len(STEP_MARK):]
                        on_step(node, steps[node].split("]", 1)[0])

            on_step(node, "starting")
            env = {**fleet.env, "TRAINFLEET_NODE": node, JOB_VARIABLE: job_id}
            argv, after = ["sh", "-c", script], []
            if fleet.container is not None:
                cwd = absolute(project.remote(fleet), homes.get(node, ""))
                argv = setup_argv(fleet, job_id, node, script, cwd, [*env, *secrets], gpus.get(node, 0) > 0)
                after = [remove_argv(fleet.container, container_name(job_id, node))]
            request = LaunchRequest(job_id=job_id, argv=argv, cwd=project.remote(fleet), workdir=fleet.workdir, env=env,
                                    secrets=dict(secrets), filled=list(secrets), grace=10.0, path=list(python_path(fleet)),
                                    after=after, secrets_file=fleet.container is not None and bool(fleet.secrets))
            try:
                states[node] = await session.call(node, request, on_event=take, timeout=None)
            except (AgentFailed, AgentError) as exc:
                lost[node] = str(exc)
            on_step(node, "done" if node in states and states[node].state == JobStatus.SUCCEEDED else "FAILED")

    await asyncio.gather(*(one(n) for n in todo))
    return SetupOutcome(digest=digest, states=states, skipped=skipped, lost=lost, steps=steps,
                        tails={n: tails[n] for n in todo if n not in states or states[n].state != JobStatus.SUCCEEDED})


async def setup_nodes(fleet: Fleet, nodes: Sequence[Node], project: Project, *, synced: bool, force: bool,
                      secrets: Mapping[str, str], log_dir: Path, on_step: Callable[[str, str], None]) -> SetupOutcome:
    """`trainfleet setup`: sync the project first (unless it is there already, checked), then set up."""
    async with await FleetSession.open(fleet, nodes) as session:
        session.unreachable.require("cannot run setup", fleet)
        if not synced:
            await sync(session, project)
        else:
            replies = await session.call_all(facts_request(fleet, [FactSection.PROJECT], project=project.name))
            replies.require("cannot run setup", fleet)
            check_code({n: a.project for n, a in replies.answers.items()}, project)
        return await run_setup(session, project, force=force, secrets=secrets, log_dir=log_dir, on_step=on_step)
