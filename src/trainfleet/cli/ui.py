"""`trainfleet ui`: the fleet and its jobs in a browser, live."""

from __future__ import annotations

import re

import click

from trainfleet.cli.app import cli, fleet_option, load, run_async, status
from trainfleet.errors import UsageError


def open_privately(url: str) -> None:
    """The browser gets a 0600 file of this user's that sends it on to `url`: the token
    never appears in the browser's command line (which every local user can read)."""
    import atexit
    import os
    import tempfile
    import threading
    import webbrowser
    from html import escape

    handle, path = tempfile.mkstemp(prefix="trainfleet-ui-", suffix=".html")  # 0600
    with os.fdopen(handle, "w") as page:
        page.write(f'<!doctype html><meta http-equiv="refresh" content="0; url={escape(url)}">')
    webbrowser.open(f"file://{path}")

    def remove() -> None:
        try:
            os.unlink(path)
        except OSError:
            pass

    # Gone once the browser has read it, or when this command ends, whichever is first.
    atexit.register(remove)
    timer = threading.Timer(30.0, remove)
    timer.daemon = True
    timer.start()


@cli.command(name="ui")
@fleet_option
@click.option("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
@click.option("--open", "open_browser", is_flag=True, help="open the page in this machine's browser")
@click.option("--interval", type=float, default=2.0, show_default=True, help="seconds between looks at the nodes")
@click.option("--metrics-pattern", metavar="REGEX",
              help="for output of another form: a regex whose named groups are metrics (`step` is the step)")
def ui(fleet_file: str | None, port: int, open_browser: bool, interval: float, metrics_pattern: str | None) -> None:
    """A live dashboard: every node (CPU, memory, GPUs), doctor's findings, the bandwidth
    heatmap of `bench net`, the jobs (stop one from the page), a job's merged log with
    filters and its loss/throughput/lr charts. Served on 127.0.0.1 behind a token; from
    another machine: `ssh -L 8000:127.0.0.1:PORT controller`, then open the URL with 8000."""
    import secrets

    from importlib.util import find_spec

    if find_spec("starlette") is None or find_spec("uvicorn") is None:
        raise UsageError("`trainfleet ui` needs Starlette and uvicorn", fix="pip install 'trainfleet[ui]'")
    from trainfleet.ui.server import bind, serve
    from trainfleet.ui.watch import FleetWatch

    try:
        pattern = re.compile(metrics_pattern) if metrics_pattern else None
    except re.error as exc:
        raise UsageError(f"--metrics-pattern: not a regular expression ({exc})") from None
    if interval <= 0:
        raise UsageError("--interval must be more than 0 seconds")
    fleet = load(fleet_file)
    sock = bind(port)
    token = secrets.token_urlsafe(24)

    def ready(url: str) -> None:
        click.echo(url, nl=True)
        status(f"serving {fleet.source} ({len(fleet.nodes)} nodes) until Ctrl-C")
        if open_browser:
            open_privately(url)

    async def main() -> None:
        watch = FleetWatch(fleet, interval, pattern)
        await watch.start()
        try:
            await serve(watch, sock, token, ready)
        finally:
            await watch.close()

    run_async(main())
    status("stopped serving")
