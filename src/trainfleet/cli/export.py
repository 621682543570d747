"""`trainfleet export slurm|k8s`: the same job for a scheduler, from the same launch plan."""

from __future__ import annotations

from pathlib import Path

import click

from trainfleet.cli.app import cli, fleet_option, load, status
from trainfleet.cli.app import refuse_stray_option
from trainfleet.cli.run import parse_env
from trainfleet.launchers import launcher_names


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
