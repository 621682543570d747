"""`trainfleet bench net`: the fleet's network, measured through torch.distributed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from trainfleet.cli.app import cli, fleet_option, load, print_line, secret_values, status
from trainfleet.cli.run import launch


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
@click.option("--plot", "plot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="also draw the point-to-point matrix as a heatmap (.png or .svg)")
@click.option("-v", "--verbose", is_flag=True, help="also show every rank's output")
def bench_net(fleet_file: str | None, min_size: str, max_size: str, p2p_size: str, nproc_per_node: int,
              min_iters: int, seconds_per_size: float, port: int | None, as_json: bool, plot_file: Path | None,
              verbose: bool) -> None:
    """All-reduce bandwidth (algbw, busbw) from --min-size to --max-size through torch.distributed
    (gloo on CPU, NCCL on GPU), and a point-to-point matrix that names the slowest link."""
    from trainfleet.job.spec import JobSpec, new_job_id
    from trainfleet.netbench.results import JOB_DIR, REMOTE_JOB_DIR, NetBenchResult, job_args, parse_size, size_ladder
    from trainfleet.ops.run import RunOptions
    from trainfleet.ops.sync import Project

    if plot_file is not None:
        from trainfleet.cli.plots import check_output

        check_output(plot_file)  # before the measuring, not after it
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
    code = launch(fleet, job, options, secret_values(fleet), printer=collect)
    if code == 0:
        from trainfleet.fleet.state import save_latest

        save_latest(fleet, "netbench", numbers.to_json())  # what `trainfleet ui` shows
        click.echo(json.dumps(numbers.to_json(), indent=2) if as_json else numbers.render())
        if plot_file is not None:
            from trainfleet.cli.plots import bandwidth_heatmap

            bandwidth_heatmap(numbers, f"point-to-point Gbit/s, {len(fleet.nodes)} nodes ({fleet.source})", plot_file)
            status(f"wrote {plot_file}")
    sys.exit(code)
