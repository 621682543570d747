"""`trainfleet status | logs | stop | top`: the fleet's jobs, from any machine with the fleet file."""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from typing import TYPE_CHECKING

import click

from trainfleet.agent.protocol import JobStatus, Restart

from trainfleet.cli.app import cli, echo_err, fleet_option, load, print_line, run_async, select, status


if TYPE_CHECKING:
    from trainfleet.fleet.model import Fleet
    from trainfleet.ops.jobs import JobView


def _when(moment: float | None) -> str:
    return _dt.datetime.fromtimestamp(moment).strftime("%m-%d %H:%M:%S") if moment else "-"


def restart_line(number: int, restart: Restart) -> str:
    """`restart 1 at 12:03:04: node1 was lost (…); went on with node[0,2]; ranks back 6.1 s later`."""
    from trainfleet.results import fold_nodes

    back = (f"ranks back {restart.resumed - restart.at:.1f} s later" if restart.resumed is not None
            else "ranks never came back")
    return (f"restart {number} at {time.strftime('%H:%M:%S', time.localtime(restart.at))}: {restart.cause}; "
            f"went on with {fold_nodes(restart.nodes)}; {back}")


def _cordon_lost(fleet: Fleet, views: list[JobView]) -> None:
    """A node a job lost while no client watched (detached, the laptop closed) is cordoned
    when `status` first sees it; a node uncordoned since is not cordoned again."""
    from trainfleet.fleet.state import cordon

    for view in views:
        moments = {r.lost: r.at for r in view.restarts}
        for name in view.lost:
            at = moments.get(name) or view.ended or time.time()
            for done in cordon(fleet, {name: f"{name} was lost"}, view.job_id, at=at):
                status(f"{done} is cordoned (job {view.job_id} lost it): `trainfleet run` leaves it out until "
                       f"`trainfleet uncordon {done}`")


@cli.command(name="status")
@fleet_option
@click.argument("job_id", required=False, default="")
@click.option("--json", "as_json", is_flag=True)
def status_command(fleet_file: str | None, job_id: str, as_json: bool) -> None:
    """The fleet's jobs: state, nodes, start time, exit codes and, for a failure, its root cause."""
    from trainfleet.ops.jobs import status as job_status
    from trainfleet.results import fold_nodes

    fleet = load(fleet_file)
    found = run_async(job_status(fleet, job_id))
    if as_json:
        click.echo(json.dumps([v.to_json() for v in found], indent=2))
        return
    if not found:
        click.echo("no jobs on this fleet's nodes")
    _cordon_lost(fleet, found)
    for view in found:
        codes = ",".join(sorted({str(s.exit_code) for s in view.nodes.values() if s.exit_code is not None})) or "-"
        line = (f"{view.job_id}  {view.state:9}  {fold_nodes(view.nodes)}  started {_when(view.started)}  "
                f"ended {_when(view.ended)}  exit {codes}")
        if view.lost:
            line += f"  lost {fold_nodes(view.lost)}"
        if view.unreachable:
            line += f"  unreachable now: {fold_nodes(view.unreachable)}"
        click.echo(line)
        for number, restart in enumerate(view.restarts, 1):
            click.echo("  " + restart_line(number, restart))
        if view.spares and (job_id or view.state.live):
            click.echo("  spares: " + ", ".join(f"{n} {what}" for n, what in view.spares.items()))
        if view.metrics and (job_id or view.state.live):
            click.echo("  last: " + ", ".join(f"{k} {v:g}" for k, v in view.metrics.items()))
        straggler = view.straggler if (job_id or view.state.live) else None
        if straggler:
            click.echo(f"  {straggler}")
        root = view.root_cause()
        if view.state in (JobStatus.STOPPED, JobStatus.LOST) and view.reason and root is None:
            click.echo(f"  {view.reason}")
        if root is not None and (job_id or view is found[0]):
            click.echo(f"  {root.headline()}")
            for text in root.first.detail.rstrip().splitlines()[-10:]:
                click.echo(f"  | {text}")


@cli.command()
@fleet_option
@click.argument("job_id", required=False, default="")
@click.option("--follow", is_flag=True, help="go on printing until the job ends (re-attaches to a detached job)")
@click.option("--node", "node_names", metavar="NODES", help="only these nodes (node[0-1], a,b)")
@click.option("--rank", type=int, help="only this rank")
@click.option("--since", help="from this long ago (10m, 2h) or this time (2026-11-23T12:30)")
@click.option("-v", "--verbose", is_flag=True, help="also the launcher's own lines")
def logs(fleet_file: str | None, job_id: str, follow: bool, node_names: str | None, rank: int | None,
         since: str | None, verbose: bool) -> None:
    """A job's output from every node, merged as `[node:rank] line` (default: the newest job)."""
    from trainfleet.ops.jobs import logs as job_logs
    from trainfleet.ops.jobs import parse_since

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    start = parse_since(since) if since else 0.0
    try:
        job_id, states = run_async(job_logs(fleet, job_id, nodes, rank=rank, since=start, follow=follow,
                                            printer=print_line, verbose=verbose, on_job=status))
    except KeyboardInterrupt:
        echo_err("trainfleet: stopped following (the job goes on)")
        sys.exit(130)
    if follow and states:
        ended = {s.state for s in states.values()}
        status(f"job {job_id} ended: {', '.join(sorted(ended))}")
        if ended != {JobStatus.SUCCEEDED}:
            sys.exit(1)


@cli.command()
@fleet_option
@click.argument("job_id")
@click.option("--grace", type=float, default=10.0, show_default=True, help="seconds between SIGTERM and SIGKILL")
def stop(fleet_file: str | None, job_id: str, grace: float) -> None:
    """End every process of JOB_ID on every node (found by the job's id, nothing else), then check."""
    from trainfleet.ops.jobs import stop as stop_job
    from trainfleet.results import fold_nodes

    fleet = load(fleet_file)
    view = run_async(stop_job(fleet, job_id, grace))
    click.echo(f"job {job_id}: {view.state} on {fold_nodes(view.nodes)}; nothing of it is left running"
               + (f" (unreachable: {fold_nodes(view.unreachable)})" if view.unreachable else ""))


@cli.command()
@fleet_option
@click.option("--once", is_flag=True, help="print one table and leave")
@click.option("--interval", type=float, default=2.0, show_default=True)
def top(fleet_file: str | None, once: bool, interval: float) -> None:
    """A live table per node: CPU, memory, GPUs, and each running job's processes, last line and steps/s."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    from rich.markup import escape

    from trainfleet.job.plan import RANK_LINE
    from trainfleet.ops.jobs import stragglers
    from trainfleet.ops.jobs import top as watch

    def shown_line(text: str) -> str:
        match = RANK_LINE.match(text)
        return escape(f"rank {match.group(1)}: {match.group(2)}" if match else text)

    fleet = load(fleet_file)

    def table(answers, failures) -> Table:  # type: ignore[no-untyped-def]
        grid = Table(header_style="bold")
        for column in ("node", "cpu", "memory", "gpus", "job", "procs", "job cpu", "steps/s", "last line"):
            grid.add_column(column, overflow="fold")
        for node in fleet.nodes:
            if node.name in failures:
                grid.add_row(node.name, "-", "-", "-", escape(failures[node.name]), "", "", "", "")
                continue
            answer = answers[node.name]
            gpus = " ".join(f"{g.util:.0f}%/{g.memory_used / 2**30:.0f}G" for g in answer.gpus) or "none"
            memory = f"{answer.memory_used / 2**30:.1f}/{answer.memory_total / 2**30:.0f}G"
            jobs = answer.jobs or [None]
            for job in jobs:
                grid.add_row(node.name, f"{answer.cpu_percent:.0f}%", memory, gpus, job.job_id if job else "-",
                             str(job.processes) if job else "", f"{job.cpu_percent:.0f}%" if job else "",
                             f"{job.steps_per_s:.2f}" if job and job.steps_per_s else "",
                             shown_line(job.last_line) if job else "")
        slow = stragglers(answers)
        if slow:  # (nothing when no node stands out)
            grid.caption = "\n".join(escape(f"{job_id}: {said}") for job_id, said in slow.items())
            grid.caption_justify = "left"
        return grid

    if once:
        async def print_once(view) -> bool:  # type: ignore[no-untyped-def]
            Console(width=200).print(table(*view))
            return False

        run_async(watch(fleet, print_once, interval))
        return
    with Live(refresh_per_second=1) as live:
        async def redraw(view) -> bool:  # type: ignore[no-untyped-def]
            live.update(table(*view))
            return True

        try:
            run_async(watch(fleet, redraw, interval))
        except KeyboardInterrupt:
            pass
