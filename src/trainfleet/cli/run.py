"""`trainfleet run`: a job on every node of the fleet."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from trainfleet.cli.app import (cli, echo_err, load, print_line, refuse_stray_option, run_cancellable, secret_values,
                                select, status, stdout_printer)
from trainfleet.cli.job_options import job_from_options, job_options

if TYPE_CHECKING:
    from trainfleet.fleet.model import Fleet, Node
    from trainfleet.job.spec import JobSpec
    from trainfleet.ops.run import RunOptions


def launch(fleet: Fleet, job: JobSpec, options: RunOptions, secrets: Mapping[str, str],
           printer: Callable[[str], None] = print_line) -> int:
    """Sync (unless told not to), then run the job; prints its summary (or, detached, its
    id); returns the exit code."""
    from trainfleet.cli.render import run_summary
    from trainfleet.ops.run import check_entrypoint_locally, run_job

    if options.sync:
        check_entrypoint_locally(job, options.project.source)
    outcome = run_cancellable(lambda cancel: run_job(fleet, job, options, secrets=secrets, printer=printer,
                                                     status=status, cancel=cancel))
    if isinstance(outcome, str):  # detached: the job runs on without this process
        status(f"job {outcome} runs on the fleet: `trainfleet logs {outcome} --follow`, `trainfleet status`, "
               f"`trainfleet stop {outcome}`")
        click.echo(outcome)
        return 0
    logs = options.log_dir or Path("trainfleet-runs") / job.job_id
    for line in run_summary(outcome, str(logs)):
        echo_err(line)
    if outcome.lost:
        from trainfleet.fleet.state import cordon

        for name in cordon(fleet, outcome.lost, job.job_id):
            status(f"{name} is cordoned: `trainfleet run` leaves it out until `trainfleet uncordon {name}`")
    return outcome.exit_code if not outcome.left_running else max(outcome.exit_code, 1)


def without_cordoned(fleet: Fleet) -> tuple[Node, ...]:
    """The fleet's nodes but those a job lost (said once per run); -n names them anyway."""
    import time

    from trainfleet.errors import UsageError
    from trainfleet.fleet.state import cordoned

    left_out = cordoned(fleet)
    for name, why in left_out.items():
        moment = time.strftime("%m-%d %H:%M", time.localtime(float(why.get("at", 0))))
        job = f"job {why['job']}, " if why.get("job") else ""
        status(f"leaving out {name}: cordoned ({why.get('why', 'lost')}; {job}{moment}); "
               f"`trainfleet uncordon {name}` lets it back in")
    nodes = tuple(n for n in fleet.nodes if n.name not in left_out)
    if not nodes:
        raise UsageError("every node of the fleet is cordoned", fix="`trainfleet uncordon NODES` once they are fixed")
    return nodes


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@job_options
@click.option("-n", "--nodes", "node_names", metavar="NODES",
              help="run on these nodes only (the first is node 0), e.g. one node to try the job alone first; "
                   "without it, every node but those cordoned after a job lost them")
@click.option("--port", type=int, help="rendezvous port on node 0 (default: 29500 if free, else any free one)")
@click.option("--dry-run", is_flag=True, help="print every node's exact command and environment, run nothing")
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: print the plan as JSON")
@click.option("--sync-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=".",
              show_default=True, help="the project: copied to its own directory on the nodes, where the job runs")
@click.option("--no-sync", is_flag=True, help="the code is already on the nodes")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path),
              help="where per-node logs go (default ./trainfleet-runs/JOB_ID)")
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="seconds between SIGTERM and SIGKILL at teardown")
@click.option("--detach", is_flag=True, help="return once every rank has started (the job id is the last line); "
              "the job goes on without this process")
@click.option("--concurrent", is_flag=True, help="run beside a job of this fleet that is still running")
@click.option("--hang-timeout", type=float, help="seconds without a line from any rank before every rank's stack is "
              "dumped and the job ends (default: off; 3600 with --detach; 0: off)")
@click.option("--loss-timeout", type=float, default=15.0, show_default=True,
              help="seconds a node may be silent (a network blip) before it counts as lost; a node whose "
                   "supervisor died counts at once")
@click.option("--reconnect-timeout", type=click.FloatRange(min=0), metavar="SECONDS",
              help="how long to keep trying to get back to a node this client lost contact with before leaving "
                   "(the job goes on; default: the fleet file's ssh.reconnect_timeout, 600)")
@click.option("--tether", type=click.FloatRange(min=1), metavar="SECONDS",
              help="end the job once this client (and any later `logs --follow`) has been gone that long "
                   "(default: a lost controller never ends a job)")
@click.option("-v", "--verbose", is_flag=True, help="also show the launcher's own output (kept in the logs anyway)")
def run(fleet_file: str | None, node_names: str | None, port: int | None, dry_run: bool, as_json: bool,
        sync_dir: Path, no_sync: bool, log_dir: Path | None, grace: float, detach: bool, concurrent: bool,
        hang_timeout: float | None, loss_timeout: float, reconnect_timeout: float | None, tether: float | None,
        verbose: bool, **job_values: Any) -> None:
    """Start SCRIPT on every node (torchrun, deepspeed, accelerate or mpirun; or any command, on
    every node or on node 0 alone) and stream every rank's output."""
    from trainfleet.ops.run import RunOptions, plan_offline
    from trainfleet.ops.sync import project_for

    refuse_stray_option(job_values["script"], run)
    fleet = load(fleet_file)
    fleet = fleet.subset(select(fleet, node_names) if node_names else without_cordoned(fleet))
    job = job_from_options(fleet, job_values, loss_timeout=loss_timeout,
                           hang_timeout=hang_timeout if hang_timeout is not None else (3600.0 if detach else 0.0))
    project = project_for(sync_dir)
    if dry_run:
        plan = plan_offline(fleet, job, project, port)
        click.echo(json.dumps(plan.to_json(), indent=2) if as_json else plan.render(), nl=as_json)
        return
    options = RunOptions(project=project, sync=not no_sync, port=port, log_dir=log_dir, grace=grace,
                         verbose=verbose, detach=detach, concurrent=concurrent, tether=tether or 0.0,
                         reconnect_timeout=reconnect_timeout)
    closed = (f"output closed: job {job.job_id} goes on; `trainfleet logs {job.job_id} --follow` follows it, "
              f"`trainfleet stop {job.job_id}` stops it")
    sys.exit(launch(fleet, job, options, secret_values(fleet), printer=stdout_printer(closed)))
