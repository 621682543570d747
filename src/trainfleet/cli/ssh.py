"""`trainfleet ssh`: trust between all nodes (one fleet key, pinned host keys)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import click

from trainfleet.cli.app import cli, echo_err, fleet_option, load, run_async, select


@cli.group(name="ssh")
def ssh_group() -> None:
    """Trust between all nodes (one fleet key, pinned host keys), checked and revocable."""


@ssh_group.command(name="setup")
@fleet_option
@click.option("--yes", is_flag=True, help="trust host keys seen for the first time without asking")
@click.option("--ask-password", is_flag=True, help="nodes that refuse your keys get a password prompt "
              "(typed once, never stored); the default when run from a terminal")
@click.option("--hosts-file", is_flag=True, help="also add node names to /etc/hosts on every node (needs root)")
@click.option("--repin", "repin", metavar="NODES", default="",
              help="nodes whose host key changed (a re-rented machine): show old and new fingerprints, and pin "
                   "the new one once confirmed (--yes confirms)")
def ssh_setup(fleet_file: str | None, yes: bool, ask_password: bool, hosts_file: bool, repin: str) -> None:
    """Install one fleet key so every node reaches every node; pin host keys; write an ssh_config."""
    import getpass

    from trainfleet.ops.trust import setup

    fleet = load(fleet_file)
    interactive = sys.stdin.isatty()

    def asking(title: str, question: str) -> Callable[[str], bool]:
        def confirm(fingerprints: str) -> bool:
            click.echo(f"{title}:\n{fingerprints}", err=True)
            return yes or (interactive and click.confirm(question, default=False, err=True))
        return confirm

    confirm = asking("host keys seen for the first time", "trust them?")
    confirm_change = asking("host keys that changed", "is this the machine you expect (compare with the provider's "
                                                      "console)? replace the pinned key?")

    def prompt(node) -> str:  # type: ignore[no-untyped-def]
        return getpass.getpass(f"password for {node.user}@{node.host} (used once, not stored): ")

    chosen = [n.name for n in select(fleet, repin)] if repin else []
    report = run_async(setup(fleet, confirm=confirm, ask_password=prompt if ask_password or interactive else None,
                             hosts_file=hosts_file, repin=chosen, confirm_change=confirm_change))
    for key in report.host_keys:
        state = "pinned" if key.status == "pinned" else "now pinned"
        click.echo(f"{key.node}: host key {key.key_type} {key.fingerprint} ({state})")
    total = sum(len(files) for files in report.changed.values())
    for node, files in report.changed.items():
        if files:
            click.echo(f"{node}: updated {', '.join(files)}")
    click.echo(f"fleet key tag {report.key.tag}: {total} file(s) changed on the nodes"
               + ("" if total else " (already set up)"))
    if report.sources:
        click.echo(f"the fleet key (on every node) is accepted from the fleet's {len(report.sources)} address(es) "
                   f"only; this machine logs in with a key of its own, which no node holds")
    if report.unrestricted:
        echo_err(f"trainfleet: warning: {report.unrestricted}; fix: see which address a node comes from with "
                 f"`ssh NODE0 'echo $SSH_CONNECTION'` on that node, and add it to the fleet file (`address:`)")
    click.echo(f"your own tools: ssh -F {fleet.ssh.ssh_config} {fleet.head.name}  "
               f"(pdsh: PDSH_SSH_ARGS_APPEND='-F {fleet.ssh.ssh_config}')")
    if report.errors:
        for node, error in report.errors.items():
            echo_err(f"trainfleet: {node}: {error}")
        sys.exit(1)


@ssh_group.command(name="check")
@fleet_option
@click.option("--json", "as_json", is_flag=True)
def ssh_check(fleet_file: str | None, as_json: bool) -> None:
    """Verify the N×N matrix: every node sshes to every node (itself included) at once."""
    from trainfleet.ops.trust import check

    fleet = load(fleet_file)
    matrix = run_async(check(fleet))
    missing = [(src, dst, r.error) for src, row in matrix.items() for dst, r in row.items() if not r.ok]
    if as_json:
        click.echo(json.dumps({"ok": not missing, "matrix": {
            src: {dst: {"ok": r.ok, "error": r.error} for dst, r in row.items()} for src, row in matrix.items()}},
            indent=2))
    else:
        pairs = len(fleet.nodes) ** 2
        click.echo(f"{pairs - len(missing)}/{pairs} node pairs can ssh to each other")
        for src, dst, error in missing:
            click.echo(f"  missing: {src} -> {dst}: {error}")
        if missing:
            click.echo("fix: run `trainfleet ssh setup`")
    sys.exit(1 if missing else 0)


@ssh_group.command(name="revoke")
@fleet_option
def ssh_revoke(fleet_file: str | None) -> None:
    """Remove from every node exactly what `ssh setup` added, and nothing else."""
    from trainfleet.ops.trust import revoke

    fleet = load(fleet_file)
    answers = run_async(revoke(fleet))
    for node in fleet.nodes:
        answer = answers[node.name]
        parts = []
        if answer.restored:
            parts.append(f"restored {', '.join(answer.restored)}")
        if answer.removed:
            parts.append(f"removed {', '.join(answer.removed)}")
        click.echo(f"{node.name}: " + ("; ".join(parts) if parts else "nothing of this fleet was there"))
