"""`trainfleet export slurm|k8s`: the same job for a scheduler, from the same launch plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from trainfleet.cli.app import cli, load, refuse_stray_option, status
from trainfleet.cli.job_options import job_from_options, job_options


@cli.group(name="export")
def export_group() -> None:
    """The same job as an sbatch script (Slurm) or a PyTorchJob manifest (Kubernetes)."""


def emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    from trainfleet.agent.files import write_atomically

    write_atomically(out, text)
    status(f"wrote {out}")


def out_option(command):  # type: ignore[no-untyped-def]
    return click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
                        help="write it here, not to stdout")(command)


def gpus_option(command):  # type: ignore[no-untyped-def]
    return click.option("--gpus-per-node", type=click.IntRange(min=0), default=0,
                        help="GPUs to ask for on each node (default: none, as on a CPU cluster)")(command)


def say_gpus(gpus_per_node: int) -> None:
    if not gpus_per_node:
        status("no GPUs requested (pass --gpus-per-node N for a GPU cluster); nodes that see none train on the CPU")


@export_group.command(name="slurm", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@gpus_option
@click.option("--cpus-per-node", type=click.IntRange(min=1),
              help="CPUs to ask for on each node (default: one per process)")
@click.option("--exclusive", is_flag=True, help="whole nodes: nothing else runs beside the job")
@out_option
@job_options
def export_slurm(gpus_per_node: int, cpus_per_node: int | None, exclusive: bool, fleet_file: str | None,
                 out: Path | None, **job_values: Any) -> None:
    """An sbatch script: srun starts the launcher on every node of the allocation."""
    from trainfleet.export.slurm import SlurmResources, render_sbatch

    refuse_stray_option(job_values["script"], export_slurm)
    fleet = load(fleet_file, ssh=False)
    job = job_from_options(fleet, job_values)
    resources = SlurmResources(gpus_per_node=gpus_per_node, cpus_per_node=cpus_per_node or 0, exclusive=exclusive)
    emit(render_sbatch(fleet, job, resources), out)
    say_gpus(gpus_per_node)


@export_group.command(name="k8s", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--image", help="the container image (default: the fleet file's `container: {image}`)")
@click.option("--secret-name", default="", help="the Secret holding the fleet's `secrets:` (default: JOB-secrets)")
@gpus_option
@out_option
@job_options
def export_k8s(image: str | None, secret_name: str, gpus_per_node: int, fleet_file: str | None, out: Path | None,
               **job_values: Any) -> None:
    """A Kubeflow PyTorchJob: a Master and Worker replicas running torchrun."""
    import yaml

    from trainfleet.export.kubernetes import render_pytorchjob

    refuse_stray_option(job_values["script"], export_k8s)
    fleet = load(fleet_file, ssh=False)
    job = job_from_options(fleet, job_values)
    chosen = image or (fleet.container.image if fleet.container else "")
    manifest = render_pytorchjob(fleet, job, chosen, secret_name, gpus_per_node)
    emit(yaml.safe_dump(manifest, sort_keys=False), out)
    say_gpus(gpus_per_node)
