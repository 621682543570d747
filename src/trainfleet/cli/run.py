"""`trainfleet run`, `bench net` and `demo`: jobs on the fleet."""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from trainfleet.cli.app import cli, echo_err, fleet_option, load, print_line, select, run_cancellable, status
from trainfleet.errors import UsageError
from trainfleet.launchers import launcher_names, launcher_options

if TYPE_CHECKING:
    from trainfleet.fleet.model import Fleet
    from trainfleet.job.spec import JobSpec
    from trainfleet.ops.run import RunOptions


def secret_values(fleet: Fleet) -> dict[str, str]:
    """Each secret from this process's environment, else typed at a prompt; never stored."""
    import getpass

    values = {}
    for name in fleet.secrets:
        value = os.environ.get(name)
        if value is None:
            if not sys.stdin.isatty():
                raise UsageError(f"{fleet.source}: secret {name} has no value",
                                 fix=f"export {name}=... before running, or run from a terminal to be asked")
            value = getpass.getpass(f"{name} (secret, not echoed): ")
        values[name] = value
    return values


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def launch(fleet: Fleet, job: JobSpec, options: RunOptions, printer: Callable[[str], None] = print_line) -> int:
    """Sync (unless told not to), then run the job; prints its summary (or, detached, its
    id); returns the exit code."""
    from trainfleet.cli.render import run_summary
    from trainfleet.ops.run import check_entrypoint_locally, run_job

    secrets = secret_values(fleet)
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
    return outcome.exit_code if not outcome.left_running else max(outcome.exit_code, 1)


def launcher_option_flags(command):  # type: ignore[no-untyped-def]
    """Each launcher's own options (`--include` for deepspeed), as its file declares them."""
    for name, (owner, declared) in sorted(launcher_options().items(), reverse=True):
        command = click.option(f"--{name}", f"option_{name.replace('-', '_')}", type=declared.type,
                               metavar=declared.metavar, help=f"{owner}: {declared.help}")(command)
    return command


def given_options(values: dict[str, str | int | None]) -> dict[str, str | int]:
    """The launcher options given on the command line, by their names."""
    return {key[len("option_"):].replace("_", "-"): value for key, value in values.items()
            if key.startswith("option_") and value not in (None, "", 0)}


def refuse_stray_option(script: str, command: click.Command) -> None:
    """`run --nproc 2 train.py`: an option run does not know, before the script, would
    otherwise become the script (or reach the launcher)."""
    if not script.startswith("-"):
        return
    name = script.split("=", 1)[0]
    known = [o for param in command.params for o in getattr(param, "opts", []) if o.startswith("--")]
    close = [o for o in known if o.startswith(name)] or difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"{command.name} has no option {name}",
                     fix=f"{hint}options for your script go after it: trainfleet {command.name} [OPTIONS] SCRIPT "
                         f"[ARGS]...")


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@fleet_option
@click.option("-n", "--nodes", "node_names", metavar="NODES",
              help="run on these nodes only (the first is node 0), e.g. one node to try the job alone first")
@click.option("--nproc-per-node", type=int, help="processes per node (default: each node's slots)")
@click.option("-m", "--module", is_flag=True, help="SCRIPT is a Python module name, as in `python -m`")
@click.option("--port", type=int, help="rendezvous port on node 0 (default: 29500 if free, else any free one)")
@click.option("--dry-run", is_flag=True, help="print every node's exact command and environment, run nothing")
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: print the plan as JSON")
@click.option("--sync-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=".",
              show_default=True, help="the project: copied to its own directory on the nodes, where the job runs")
@click.option("--no-sync", is_flag=True, help="the code is already on the nodes")
@click.option("--max-restarts", type=int, default=0, show_default=True, help="torchrun's restarts on failure")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path),
              help="where per-node logs go (default ./trainfleet-runs/JOB_ID)")
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="seconds between SIGTERM and SIGKILL at teardown")
@click.option("--job-id", help="rendezvous id and log name (default: tf-DATE-TIME-RANDOM)")
@click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE", help="extra environment for this run")
@click.option("--launcher", type=click.Choice(launcher_names()),
              help="what starts the ranks on the nodes (default: the fleet file's `launcher:`, else torchrun)")
@launcher_option_flags
@click.option("--launcher-arg", "launcher_args", multiple=True, metavar="ARG",
              help="an option for the launcher itself, before the script (repeat)")
@click.option("--detach", is_flag=True, help="return once every rank has started (the job id is the last line); "
              "the job goes on without this process")
@click.option("--concurrent", is_flag=True, help="run beside a job of this fleet that is still running")
@click.option("--hang-timeout", type=float, help="seconds without a line from any rank before every rank's stack is "
              "dumped and the job ends (default: off; 3600 with --detach; 0: off)")
@click.option("-v", "--verbose", is_flag=True, help="also show the launcher's own output (kept in the logs anyway)")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(fleet_file: str | None, node_names: str | None, nproc_per_node: int | None, module: bool, port: int | None, dry_run: bool,
        as_json: bool, sync_dir: Path, no_sync: bool, max_restarts: int, log_dir: Path | None, grace: float,
        job_id: str | None, env_pairs: tuple[str, ...], launcher: str | None, launcher_args: tuple[str, ...],
        detach: bool, concurrent: bool, hang_timeout: float | None, verbose: bool, script: str, args: tuple[str, ...],
        **launcher_option_values: str | int | None) -> None:
    """Start SCRIPT on every node (torchrun, deepspeed or accelerate; or any command, on
    every node or on node 0 alone) and stream every rank's output."""
    from trainfleet.job.spec import JobSpec, new_job_id, validate_job
    from trainfleet.launchers import check_options
    from trainfleet.ops.run import RunOptions, plan_offline
    from trainfleet.ops.sync import project_for

    refuse_stray_option(script, run)
    fleet = load(fleet_file)
    fleet = fleet.subset(select(fleet, node_names))
    job = JobSpec(entrypoint=script, args=args, module=module, nproc_per_node=nproc_per_node,
                  max_restarts=max_restarts, job_id=job_id or new_job_id(), env=parse_env(env_pairs),
                  launcher=launcher or fleet.launcher, launcher_args=launcher_args,
                  options=given_options(launcher_option_values),
                  hang_timeout=hang_timeout if hang_timeout is not None else (3600.0 if detach else 0.0))
    validate_job(job)
    check_options(job)
    project = project_for(sync_dir)
    if dry_run:
        plan = plan_offline(fleet, job, project, port)
        click.echo(json.dumps(plan.to_json(), indent=2) if as_json else plan.render(), nl=as_json)
        return
    options = RunOptions(project=project, sync=not no_sync, port=port, log_dir=log_dir, grace=grace,
                         verbose=verbose, detach=detach, concurrent=concurrent)
    sys.exit(launch(fleet, job, options))


@cli.group()
def bench() -> None:
    """Measure the fleet."""


@bench.command(name="net")
@fleet_option
@click.option("--min-size", default="1K", show_default=True)
@click.option("--max-size", default="256M", show_default=True)
@click.option("--p2p-size", default="32M", show_default=True, help="bytes per point-to-point transfer (0: skip)")
@click.option("--nproc-per-node", type=int, default=1, show_default=True,
              help="ranks per node (1 measures the network; slots measures what training sees)")
@click.option("--min-iters", type=int, default=3, show_default=True)
@click.option("--seconds-per-size", type=float, default=1.0, show_default=True)
@click.option("--port", type=int, help="rendezvous port on node 0")
@click.option("--json", "as_json", is_flag=True)
@click.option("-v", "--verbose", is_flag=True, help="also show every rank's output")
def bench_net(fleet_file: str | None, min_size: str, max_size: str, p2p_size: str, nproc_per_node: int,
              min_iters: int, seconds_per_size: float, port: int | None, as_json: bool, verbose: bool) -> None:
    """All-reduce bandwidth (algbw, busbw) from --min-size to --max-size through torch.distributed
    (gloo on CPU, NCCL on GPU), and a point-to-point matrix that names the slowest link."""
    from trainfleet.job.spec import JobSpec, new_job_id
    from trainfleet.netbench import JOB_DIR, REMOTE_JOB_DIR, NetBenchResult, job_args, parse_size, size_ladder
    from trainfleet.ops.run import RunOptions
    from trainfleet.ops.sync import Project

    fleet = load(fleet_file)
    sizes = size_ladder(parse_size(min_size), parse_size(max_size))
    numbers = NetBenchResult(node_names=[n.name for n in fleet.nodes])

    def collect(line: str) -> None:
        if not numbers.take(line) and verbose:
            print_line(line)

    job = JobSpec(entrypoint="netbench.py", nproc_per_node=nproc_per_node, job_id=new_job_id(),
                  args=job_args(sizes, parse_size(p2p_size), min_iters, seconds_per_size))
    options = RunOptions(project=Project(source=JOB_DIR, name=REMOTE_JOB_DIR), port=port, grace=5.0, verbose=verbose,
                         concurrent=True)
    code = launch(fleet, job, options, printer=collect)
    if code == 0:
        click.echo(json.dumps(numbers.to_json(), indent=2) if as_json else numbers.render())
    sys.exit(code)


@cli.command()
@click.option("--steps", type=int, default=60, show_default=True)
@click.option("--name", default="demo", show_default=True, help="sandbox name to use")
def demo(steps: int, name: str) -> None:
    """Sandbox up (2 nodes), train the example across both, show the loss falling, sandbox down."""
    from trainfleet.examples_path import example_dir
    from trainfleet.fleet import load_fleet
    from trainfleet.job.spec import JobSpec, new_job_id
    from trainfleet.ops.run import RunOptions
    from trainfleet.ops.sync import project_for
    from trainfleet.sandbox import cluster

    example = example_dir("charlm")
    state = cluster.up(2, name=name, slots=2)
    try:
        fleet = load_fleet(Path(state.fleet_file))
        status(f"sandbox {name}: 2 nodes ({', '.join(n.address for n in state.nodes)}); training {example.name} "
               f"with 2 processes per node")
        job = JobSpec(entrypoint="train.py", args=("--steps", str(steps), "--checkpoint-dir", "checkpoints"),
                      job_id=new_job_id())
        losses: list[str] = []

        def show(line: str) -> None:
            if line.startswith(f"[{fleet.head.name}:0] step ") and " loss " in line:
                losses.append(line.split(" loss ")[1].split()[0])
            print_line(line)

        code = launch(fleet, job, RunOptions(project=project_for(example), grace=5.0), printer=show)
    finally:
        cluster.down(name, missing_ok=True)
        status(f"sandbox {name} removed")
    if code == 0 and len(losses) >= 2:
        status(f"demo: loss fell from {losses[0]} to {losses[-1]} in {steps} steps across 2 nodes x 2 processes")
    sys.exit(code)


@cli.group(name="export")
def export_group() -> None:
    """The same job as an sbatch script (Slurm) or a PyTorchJob manifest (Kubernetes)."""


def job_options(command):  # type: ignore[no-untyped-def]
    for option in reversed([
        fleet_option,
        click.option("--launcher", type=click.Choice(launcher_names())),
        click.option("--nproc-per-node", type=int),
        click.option("-m", "--module", is_flag=True),
        click.option("--max-restarts", type=int, default=0, show_default=True),
        click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE"),
        click.option("--job-id", help="the job's name (default: tf-DATE-TIME-RANDOM)"),
        click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path), help="write it here, not to stdout"),
        click.argument("script"),
        click.argument("args", nargs=-1, type=click.UNPROCESSED),
    ]):
        command = option(command)
    return command


def exported_job(fleet, launcher, nproc_per_node, module, max_restarts, env_pairs, job_id, script, args):  # type: ignore[no-untyped-def]
    from trainfleet.job.spec import JobSpec, new_job_id

    return JobSpec(entrypoint=script, args=args, module=module, nproc_per_node=nproc_per_node,
                   max_restarts=max_restarts, job_id=job_id or new_job_id(), env=parse_env(env_pairs),
                   launcher=launcher or fleet.launcher)


def emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    from trainfleet.files import write_atomically

    write_atomically(out, text)
    status(f"wrote {out}")


@export_group.command(name="slurm", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@job_options
def export_slurm(fleet_file: str | None, launcher: str | None, nproc_per_node: int | None, module: bool,
                 max_restarts: int, env_pairs: tuple[str, ...], job_id: str | None, out: Path | None, script: str,
                 args: tuple[str, ...]) -> None:
    """An sbatch script: srun starts the launcher on every node of the allocation."""
    from trainfleet.export.slurm import render_sbatch

    refuse_stray_option(script, export_slurm)
    fleet = load(fleet_file)
    job = exported_job(fleet, launcher, nproc_per_node, module, max_restarts, env_pairs, job_id, script, args)
    emit(render_sbatch(fleet, job), out)


@export_group.command(name="k8s", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--image", help="the container image (default: the fleet file's `container: {image}`)")
@click.option("--secret-name", default="", help="the Secret holding the fleet's `secrets:` (default: JOB-secrets)")
@job_options
def export_k8s(image: str | None, secret_name: str, fleet_file: str | None, launcher: str | None,
               nproc_per_node: int | None, module: bool, max_restarts: int, env_pairs: tuple[str, ...],
               job_id: str | None, out: Path | None, script: str, args: tuple[str, ...]) -> None:
    """A Kubeflow PyTorchJob: a Master and Worker replicas running torchrun."""
    import yaml

    from trainfleet.export.kubernetes import render_pytorchjob

    refuse_stray_option(script, export_k8s)
    fleet = load(fleet_file)
    job = exported_job(fleet, launcher, nproc_per_node, module, max_restarts, env_pairs, job_id, script, args)
    chosen = image or (fleet.container.image if fleet.container else "")
    emit(yaml.safe_dump(render_pytorchjob(fleet, job, chosen, secret_name), sort_keys=False), out)
