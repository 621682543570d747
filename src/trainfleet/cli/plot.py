"""`trainfleet plot`: a job's metric over steps, as a picture, where there is no browser."""

from __future__ import annotations

import re
from pathlib import Path

import click

from trainfleet.cli.app import cli, fleet_option, load, run_async, status
from trainfleet.errors import UsageError


def job_lines(fleet_file: str | None, job_id: str, log_dir: Path) -> tuple[str, list[str], str]:
    """(job id, its `[node:rank] text` lines, the fleet's name): from the logs `run` kept
    here when there are any, else from the nodes (a detached job, another machine's run)."""
    local = log_dir / job_id if job_id else None
    if local is not None and local.is_dir():
        lines = [line for path in sorted(local.glob("*.log")) for line in path.read_text(errors="replace").splitlines()]
        return job_id, lines, fleet_file or "fleet.yaml"
    from trainfleet.ops.jobs import logs

    fleet = load(fleet_file)
    collected: list[str] = []
    found, _ = run_async(logs(fleet, job_id, fleet.nodes, rank=None, since=0.0, follow=False,
                              printer=collected.append, on_job=status))
    return found, collected, fleet.source


@cli.command(name="plot")
@fleet_option
@click.argument("job_id", required=False, default="")
@click.option("--metric", default="loss", show_default=True, help="the metric to draw, as the job prints it")
@click.option("-o", "--out", type=click.Path(dir_okay=False, path_type=Path),
              help="the picture (.png or .svg; default: JOB-METRIC.png here)")
@click.option("--metrics-pattern", metavar="REGEX",
              help="for output of another form: a regex whose named groups are metrics (`step` is the step)")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("trainfleet-runs"),
              show_default=True, help="where `run` kept the job's logs (else they are read from the nodes)")
def plot(fleet_file: str | None, job_id: str, metric: str, out: Path | None, metrics_pattern: str | None,
         log_dir: Path) -> None:
    """Draw METRIC over steps for JOB_ID (default: the newest job), one line per rank that
    prints it, from the output the job already prints (loss, tokens/s, lr, HF Trainer's dicts...)."""
    from trainfleet.cli.plots import check_output, metric_plot
    from trainfleet.agent.metrics import collect

    try:
        pattern = re.compile(metrics_pattern) if metrics_pattern else None
    except re.error as exc:
        raise UsageError(f"--metrics-pattern: not a regular expression ({exc})") from None
    if pattern is not None and not pattern.groupindex:
        raise UsageError("--metrics-pattern has no named group", fix=r"name each metric: 'it (?P<step>\d+) l=(?P<loss>\S+)'")
    if out is not None:
        check_output(out)
    found, lines, fleet_name = job_lines(fleet_file, job_id, log_dir)
    target = out or Path(f"{found}-{metric.replace('/', '_')}.png")
    drawn = metric_plot(collect(lines, pattern), metric, f"{metric} of job {found} ({fleet_name})", target)
    status(f"wrote {target}: {metric} of {drawn} rank(s)")
