"""The options that describe a job: one set, read the same way by `run`, `run --dry-run`
and `export slurm|k8s`, so that what one accepts the others accept too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from trainfleet.cli.app import fleet_option
from trainfleet.errors import UsageError
from trainfleet.launchers import fleet_launcher, launcher_names, launcher_options

if TYPE_CHECKING:
    from trainfleet.fleet.model import Fleet
    from trainfleet.job.spec import JobSpec

OPTION_PREFIX = "option_"


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise UsageError(f"--env {pair!r}: expected NAME=VALUE")
        env[name] = value
    return env


def _launcher_option_flags(command):  # type: ignore[no-untyped-def]
    """Each launcher's own options (`--include` for deepspeed), as its file declares them."""
    for name, (owner, declared) in sorted(launcher_options().items(), reverse=True):
        command = click.option(f"--{name}", f"{OPTION_PREFIX}{name.replace('-', '_')}", type=declared.type,
                               metavar=declared.metavar, help=f"{owner}: {declared.help}")(command)
    return command


def job_options(command):  # type: ignore[no-untyped-def]
    """The fleet file, the launcher and its options, the processes, the script and its arguments."""
    for option in reversed([
        fleet_option,
        click.option("--nproc-per-node", type=int, help="processes per node (default: each node's slots)"),
        click.option("-m", "--module", is_flag=True, help="SCRIPT is a Python module name, as in `python -m`"),
        click.option("--max-restarts", type=int, default=0, show_default=True, help="restarts on failure: torchrun's own; for other launchers the whole job starts "
                     "again on every node, without a lost node where it can (TRAINFLEET_RESTART_COUNT says which "
                     "start it is)"),
        click.option("--spares", f"{OPTION_PREFIX}spares", type=int, metavar="K",
                     help="hold the fleet's last K nodes back to take a lost node's place (with --max-restarts; "
                          "also `spare: true` in the fleet file; not mpirun or head)"),
        click.option("--job-id", help="rendezvous id and log name (default: tf-DATE-TIME-RANDOM)"),
        click.option("--env", "env_pairs", multiple=True, metavar="NAME=VALUE", help="extra environment for this job"),
        click.option("--launcher", type=click.Choice(launcher_names()),
                     help="what starts the ranks on the nodes (default: the fleet file's `launcher:`, else torchrun)"),
        _launcher_option_flags,
        click.option("--launcher-arg", "launcher_args", multiple=True, metavar="ARG",
                     help="an option for the launcher itself, before the script (repeat)"),
        click.argument("script"),
        click.argument("args", nargs=-1, type=click.UNPROCESSED),
    ]):
        command = option(command)
    return command


def job_from_options(fleet: Fleet, values: Mapping[str, Any], **more: Any) -> JobSpec:
    """The job the options describe (`more`: what only the calling command decides), checked
    whole: its id, sizes, environment names, and each launcher option against its launcher."""
    from trainfleet.job.spec import JobSpec, new_job_id, new_rendezvous_id, validate_job
    from trainfleet.launchers import check_options

    launcher = fleet_launcher(fleet, values["launcher"])
    given = {key[len(OPTION_PREFIX):].replace("_", "-"): value for key, value in values.items()
             if key.startswith(OPTION_PREFIX) and value not in (None, "", 0)}
    job_id = values["job_id"] or new_job_id()
    job = JobSpec(entrypoint=values["script"], args=tuple(values["args"]), module=values["module"],
                  nproc_per_node=values["nproc_per_node"], max_restarts=values["max_restarts"],
                  job_id=job_id, rendezvous_id=new_rendezvous_id(job_id), env=parse_env(values["env_pairs"]),
                  launcher=launcher,
                  launcher_args=tuple(values["launcher_args"]), options=given, **more)
    validate_job(job)
    check_options(job)
    return job
