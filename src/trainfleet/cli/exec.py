"""`trainfleet exec`: a shell command on every node at once."""

from __future__ import annotations

import json
import sys

import click

from trainfleet.cli.app import (cli, echo_err, fleet_option, load, nodes_option, print_line, refuse_stray_option,
                                run_async, select)


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
    from trainfleet.ops.exec import exec_command

    # Unknown options pass through for the command's own (`exec nvidia-smi -L`); a mistyped
    # one of ours must not run on every node as a shell command.
    refuse_stray_option(command[0], click.get_current_context().command, "-- COMMAND...", "the command")
    fleet = load(fleet_file)
    nodes = select(fleet, node_names)

    def show(node: str, stream: str, line: str) -> None:
        if stream == "stderr":
            click.echo(f"{node}: {line}", err=True)
        else:
            print_line(f"{node}: {line}")

    result = run_async(exec_command(fleet, nodes, " ".join(command), on_output=None if as_json else show,
                                    timeout=timeout))
    if as_json:
        click.echo(json.dumps({"ok": result.ok, "nodes": [r.to_json() for r in result.results]}, indent=2))
    else:
        for nodes_folded, reason in result.grouped_failures():
            echo_err(f"trainfleet: {nodes_folded}: {reason}")
    sys.exit(result.exit_code())
