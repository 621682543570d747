"""`trainfleet demo`: a sandbox, the example trained across it, the sandbox gone."""

from __future__ import annotations

import sys

import click

from trainfleet.cli.app import cli, print_line, secret_values, status
from trainfleet.cli.run import launch


@cli.command()
@click.option("--steps", type=int, default=60, show_default=True)
@click.option("--name", default="demo", show_default=True, help="sandbox name to use")
def demo(steps: int, name: str) -> None:
    """Sandbox up (2 nodes), train the example across both, show the loss falling, sandbox down."""
    from trainfleet.cli.examples import example_dir
    from trainfleet.job.spec import JobSpec, new_job_id
    from trainfleet.ops.demo import demo_fleet
    from trainfleet.ops.run import RunOptions
    from trainfleet.ops.sync import project_for

    example = example_dir("charlm")
    with demo_fleet(name, status) as fleet:
        status(f"training {example.name} with 2 processes per node")
        job = JobSpec(entrypoint="train.py", args=("--steps", str(steps), "--checkpoint-dir", "checkpoints"),
                      job_id=new_job_id())
        losses: list[str] = []

        def show(line: str) -> None:
            if line.startswith(f"[{fleet.head.name}:0] step ") and " loss " in line:
                losses.append(line.split(" loss ")[1].split()[0])
            print_line(line)

        code = launch(fleet, job, RunOptions(project=project_for(example), grace=5.0), secret_values(fleet),
                      printer=show)
    if code == 0 and len(losses) >= 2:
        status(f"demo: loss fell from {losses[0]} to {losses[-1]} in {steps} steps across 2 nodes x 2 processes")
    sys.exit(code)
