"""`trainfleet exec` and `sync`: commands and code on every node."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from trainfleet.cli.app import StatusLine, cli, echo_err, fleet_option, load, nodes_option, select, status


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@fleet_option
@nodes_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document with every node's result")
@click.option("--timeout", type=float, help="seconds before a node's command is abandoned")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(fleet_file: str | None, node_names: str | None, as_json: bool, timeout: float | None,
                 command: tuple[str, ...]) -> None:
    """Run a shell command on every node at once (like pdsh), in this directory's project
    on the nodes once synced (else the workdir): `trainfleet exec -- nvidia-smi -L`."""
    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    from trainfleet.ops.sync import exec_directories
    from trainfleet.transport.ssh import start_tcp

    sockets = start_tcp(nodes[:fleet.ssh.fanout])  # before asyncssh is even imported
    from trainfleet.transport.session import FleetSession

    text = " ".join(command)

    def show(node: str, stream: str, line: str) -> None:
        click.echo(f"{node}: {line}", err=stream == "stderr")

    async def everywhere():  # type: ignore[no-untyped-def]
        async with await FleetSession.open(fleet, nodes, agents=False, sockets=sockets, wait=False) as session:
            return await session.run(text, on_output=None if as_json else show, timeout=timeout,
                                     cwd=exec_directories(fleet))

    result = asyncio.run(everywhere())
    if as_json:
        click.echo(json.dumps({"ok": result.ok, "nodes": [r.to_json() for r in result.results]}, indent=2))
    else:
        for nodes_folded, reason in result.grouped_failures():
            echo_err(f"trainfleet: {nodes_folded}: {reason}")
    sys.exit(result.exit_code())


@cli.command()
@fleet_option
@nodes_option
@click.option("--delete", is_flag=True, help="also delete files on the nodes that are gone here (not your "
              "nodes' own records; checkpoints the job wrote into the directory would go)")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN", help="rsync pattern not to copy (repeat)")
@click.argument("source", default=".", type=click.Path(file_okay=False, exists=True, path_type=Path))
def sync(fleet_file: str | None, node_names: str | None, delete: bool, excludes: tuple[str, ...],
         source: Path) -> None:
    """Copy a directory (default: the current one) into its own directory on every node."""
    from trainfleet.ops.sync import project_for
    from trainfleet.ops.sync import sync as sync_project

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    project = project_for(source)
    line = StatusLine("sync")

    async def copy():  # type: ignore[no-untyped-def]
        async with await FleetSession.open(fleet, nodes) as session:
            require_ok(fleet, session.failures, "cannot sync")
            return await sync_project(session, project, excludes=excludes, delete=delete,
                                      progress=lambda node, percent: line.update(node, f"{percent}%"))

    from trainfleet.ops.common import require_ok
    from trainfleet.transport.session import FleetSession

    try:
        result, listed = asyncio.run(copy())
    finally:
        line.done()
    slowest = max(r.seconds for r in result.results)
    status(f"synced {project.source} ({len(listed.files)} files) to {project.remote(fleet)} on {len(nodes)} "
           f"node(s) in {slowest:.1f}s")


@cli.command()
@fleet_option
@nodes_option
@click.option("--force", is_flag=True, help="run it again where it already succeeded")
@click.option("--sync-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=".",
              show_default=True, help="the project it is for (it runs in that project's directory)")
@click.option("--no-sync", is_flag=True, help="the code is already on the nodes")
def setup(fleet_file: str | None, node_names: str | None, force: bool, sync_dir: Path, no_sync: bool) -> None:
    """Run the fleet file's `setup:` commands on every node at once, where they have not
    succeeded yet: live state per node, each node's output in its own log."""
    import datetime as _dt

    from trainfleet.cli.run import secret_values
    from trainfleet.ops.common import require_ok
    from trainfleet.ops.setup import run_setup
    from trainfleet.ops.sync import check_code, project_for
    from trainfleet.ops.sync import sync as sync_project
    from trainfleet.results import fold_nodes
    from trainfleet.transport.session import FleetSession

    fleet = load(fleet_file)
    nodes = select(fleet, node_names)
    project = project_for(sync_dir)
    secrets = secret_values(fleet)
    logs = Path("trainfleet-runs") / f"setup-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    line = StatusLine("setup")

    async def everywhere():  # type: ignore[no-untyped-def]
        async with await FleetSession.open(fleet, nodes) as session:
            require_ok(fleet, session.failures, "cannot run setup")
            if not no_sync:
                await sync_project(session, project)
            else:
                from trainfleet.ops.common import facts_request

                replies = await session.call_all(facts_request(fleet, ["project"], project=project.name))
                require_ok(fleet, replies.failures, "cannot run setup")
                check_code({n: a.project for n, a in replies.answers.items()}, project)
            return await run_setup(session, project, force=force, secrets=secrets, log_dir=logs,
                                   on_step=line.update)

    try:
        outcome = asyncio.run(everywhere())
    finally:
        line.done()
    if outcome.skipped:
        status(f"setup {outcome.digest} already done on {fold_nodes(outcome.skipped)} (--force runs it again)")
    done = [n for n, s in outcome.states.items() if s.state == "succeeded"]
    if done:
        slowest = max((s.ended or s.started) - s.started for n, s in outcome.states.items() if n in done)
        status(f"setup {outcome.digest} succeeded on {fold_nodes(done)} in {slowest:.1f}s; output in {logs}")
    for node in outcome.failed:
        state = outcome.states.get(node)
        why = outcome.lost.get(node) or (f"exit status {state.exit_code}" if state else "failed")
        echo_err(f"trainfleet: setup failed on {node} ({why}); last output ({logs / (node + '.log')}):")
        for text in outcome.tails.get(node, [])[-10:]:
            echo_err(f"  | {text}")
    sys.exit(1 if outcome.failed else 0)
