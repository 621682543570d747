"""`trainfleet doctor`: what is broken, on which node, and how to fix it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trainfleet.cli.app import cli, fleet_option, load, run_async, status


@cli.command()
@fleet_option
@click.option("--port", type=int, default=29500, show_default=True, help="rendezvous port to test on node 0")
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON")
@click.option("--all", "show_all", is_flag=True, help="also list the checks that passed")
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="also draw the throughput of each node to the next (the ring doctor measures) as a heatmap")
@click.option("--deep", is_flag=True, help="also exercise every GPU (every node's CPU where it has none) at once for "
                                         "--seconds, and name the slow or broken one")
@click.option("--seconds", type=float, default=10.0, show_default=True, help="how long --deep runs each device")
def doctor(fleet_file: str | None, port: int, as_json: bool, show_all: bool, plot_file: Path | None, deep: bool,
           seconds: float) -> None:
    """Find what is broken before GPU time is spent: node, cause and fix for each problem."""
    import dataclasses

    from trainfleet.cli.render import doctor_table
    from trainfleet.ops.doctor import deep as exercise
    from trainfleet.ops.doctor import examine

    from trainfleet.errors import UsageError
    from trainfleet.ops.sync import project_for

    if plot_file is not None:
        from trainfleet.cli.plots import check_output

        check_output(plot_file)  # before the checks, not after them
    if deep and seconds <= 0:
        raise UsageError(f"--seconds {seconds:g}: must be more than 0", fix="leave it out for 10 s")
    fleet = load(fleet_file)
    try:
        project = project_for(Path.cwd()).name
    except UsageError:  # run from / or the home directory: no project to check
        project = ""
    report = run_async(examine(fleet, rdzv_port=port, project=project))
    if deep:
        status(f"exercising every node's devices for {seconds:g} s ...")
        import time

        started = time.monotonic()
        found = tuple(run_async(exercise(fleet, seconds)))
        report = dataclasses.replace(report, findings=report.findings + found,
                                     seconds=report.seconds + time.monotonic() - started)
    from trainfleet.fleet.state import save_latest

    save_latest(fleet, "doctor", report.to_json())  # what `trainfleet ui` shows
    if plot_file is not None:
        from trainfleet.netbench.results import NetBenchResult
        from trainfleet.cli.plots import bandwidth_heatmap

        # Blank cells: pairs doctor does not measure (`bench net` measures every pair).
        bandwidth_heatmap(NetBenchResult(p2p=report.ring), f"doctor, each node to the next (Gbit/s)\n{fleet.source}",
                          plot_file)
        status(f"wrote {plot_file}")
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(doctor_table(report, show_all=show_all))
    sys.exit(0 if report.ok else 1)
