"""`trainfleet init`, `import`, `check`: describing the fleet; `cordon`, `uncordon`: which nodes `run` uses."""

from __future__ import annotations

from pathlib import Path

import click

from trainfleet.cli.app import cli, fleet_option, load, run_async, select
from trainfleet.errors import SpecError, UsageError
from trainfleet.results import fold_nodes


def write_new(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", fix="pass --force to overwrite it, or -o another file")
    from trainfleet.agent.files import write_atomically

    write_atomically(path, text)


@cli.command()
@click.option("-o", "--out", default="fleet.yaml", show_default=True, help="where to write it")
@click.option("--force", is_flag=True, help="overwrite an existing file")
def init(out: str, force: bool) -> None:
    """Write a commented fleet.yaml to start from."""
    from trainfleet.cli.fleet_template import FLEET_TEMPLATE

    write_new(Path(out), FLEET_TEMPLATE, force)
    click.echo(f"wrote {out}: list your machines under `nodes:`; then `trainfleet check`, `trainfleet ssh setup` "
               f"(pins each node's host key) and `trainfleet doctor`")


@cli.group(name="import")
def import_group() -> None:
    """Make a fleet.yaml from a DeepSpeed/MPI hostfile or ~/.ssh/config."""


@import_group.command(name="hostfile")
@click.argument("hostfile", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ssh-config", type=click.Path(dir_okay=False, path_type=Path),
              help="resolve host aliases through this file (default ~/.ssh/config)")
@click.option("-o", "--out", default="fleet.yaml", show_default=True)
@click.option("--force", is_flag=True, help="overwrite an existing file")
def import_hostfile(hostfile: Path, ssh_config: Path | None, out: str, force: bool) -> None:
    """`host slots=N` lines, as DeepSpeed's --hostfile reads them."""
    from trainfleet.fleet.importers import SSHConfig, parse_hostfile
    from trainfleet.fleet.schema import dump_fleet_yaml, fleet_from_data

    try:
        text = hostfile.read_text()
    except OSError as exc:
        raise SpecError(f"{hostfile}: cannot read hostfile: {exc.strerror}") from None
    config = SSHConfig.load(ssh_config) if ssh_config else SSHConfig.load_default()
    data = parse_hostfile(text, str(hostfile), config)
    fleet = fleet_from_data(data, str(hostfile))
    write_new(Path(out), f"# imported from {hostfile}\n" + dump_fleet_yaml(data), force)
    click.echo(f"wrote {out} with {len(fleet.nodes)} node(s), {sum(n.slots for n in fleet.nodes)} slot(s); "
               f"next: `trainfleet ssh setup -f {out}` pins each node's host key")


@import_group.command(name="ssh-config")
@click.argument("aliases", nargs=-1)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="default ~/.ssh/config")
@click.option("--slots", default=1, show_default=True, type=int, help="processes (GPUs) per node")
@click.option("-o", "--out", default="fleet.yaml", show_default=True)
@click.option("--force", is_flag=True, help="overwrite an existing file")
def import_ssh_config(aliases: tuple[str, ...], config_path: Path | None, slots: int, out: str, force: bool) -> None:
    """Host aliases (all concrete ones if none are named)."""
    from trainfleet.fleet.importers import SSHConfig, fleet_data_from_ssh_config
    from trainfleet.fleet.schema import dump_fleet_yaml, fleet_from_data

    config = SSHConfig.load(config_path) if config_path else SSHConfig.load_default()
    data = fleet_data_from_ssh_config(config, list(aliases), slots)
    fleet = fleet_from_data(data, config.source)
    write_new(Path(out), f"# imported from {config.source}\n" + dump_fleet_yaml(data), force)
    click.echo(f"wrote {out} with {len(fleet.nodes)} node(s)")


@cli.command(name="check")
@fleet_option
def check_fleet(fleet_file: str | None) -> None:
    """Validate the fleet file and print the resolved nodes."""
    from trainfleet.launchers import fleet_launcher

    from trainfleet.fleet.state import cordoned

    fleet = load(fleet_file)
    fleet_launcher(fleet)
    left_out = cordoned(fleet)
    for node in fleet.nodes:
        via = f" via {node.jump}" if node.jump else ""
        marks = " spare" if node.spare else ""
        if node.name in left_out:
            entry = left_out[node.name]
            marks += f" cordoned ({entry.get('why', 'lost')}" + (f", job {entry['job']})" if entry.get("job") else ")")
        click.echo(f"{node.name}: {node.ssh_target}{via} slots={node.slots} address={node.address}"
                   f" interface={node.interface or '(detected at launch)'}{marks}")
    placeholders = [n.name for n in fleet.nodes if documentation_address(n.host)]
    if placeholders:
        raise SpecError(f"{fleet.source}: {fold_nodes(placeholders)} still have example addresses from the template "
                        f"(203.0.113.x and the like are for documentation: they reach no machine)",
                        fix="put your machines' addresses (or ~/.ssh/config names) under `nodes:`")
    from trainfleet.transport.ssh import host_pinned, known_hosts_files

    unpinned = [n.name for n in fleet.nodes if n.jump is None and not host_pinned(known_hosts_files(fleet.ssh), n)]
    if unpinned:
        click.echo(f"next: `trainfleet ssh setup` shows and pins the host key of {fold_nodes(unpinned)} "
                   f"(not known yet: every command refuses an unknown key)")


def documentation_address(host: str) -> bool:
    """An address or name reserved for examples (RFC 5737, 3849, 2606): the template's."""
    import ipaddress

    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host == "example.com" or host.endswith((".example", ".example.com", ".example.org", ".example.net"))
    return any(address in ipaddress.ip_network(net) for net in ("192.0.2.0/24", "198.51.100.0/24",
                                                                "203.0.113.0/24", "2001:db8::/32")
               if ipaddress.ip_network(net).version == address.version)


@cli.command()
@fleet_option
@click.argument("nodes")
def cordon(fleet_file: str | None, nodes: str) -> None:
    """Leave NODES (a,b or node[0-3]) out of the next `run`s until `trainfleet uncordon`
    (done for you when a job loses a node)."""
    from trainfleet.fleet.state import cordon as cordon_nodes

    fleet = load(fleet_file)
    names = [n.name for n in select(fleet, nodes)]
    if len(names) == len(fleet.nodes):
        raise UsageError(f"cordon {nodes}: that leaves no node to run on", fix="cordon fewer nodes")
    done = cordon_nodes(fleet, {n: "by hand" for n in names}, "")
    click.echo(f"cordoned: {fold_nodes(done)}" if done else f"already cordoned: {fold_nodes(names)}")


@cli.command()
@fleet_option
@click.argument("nodes")
def uncordon(fleet_file: str | None, nodes: str) -> None:
    """Let NODES (a,b or node[0-3]) back into `run` once fixed (`trainfleet doctor -n NODES` checks them)."""
    from trainfleet.fleet.state import uncordon as uncordon_nodes

    fleet = load(fleet_file)
    names = [n.name for n in select(fleet, nodes)]
    freed = uncordon_nodes(fleet, names)
    click.echo(f"uncordoned: {fold_nodes(freed)}" if freed else f"not cordoned: {fold_nodes(names)}")


@cli.command()
@fleet_option
@click.option("--format", "form", type=click.Choice(["deepspeed", "mpi", "slurm"]), default="deepspeed",
              show_default=True)
@click.option("--write", "path", metavar="PATH", help="write it to PATH on every node instead of printing it")
def hostfile(fleet_file: str | None, form: str, path: str | None) -> None:
    """The fleet as a hostfile (node names, which `trainfleet ssh setup` makes resolvable)."""
    from trainfleet.fleet.hostfiles import render_hostfile
    from trainfleet.ops.common import write_files

    fleet = load(fleet_file)
    text = render_hostfile(fleet, form)
    if not path:
        click.echo(text, nl=False)
        return

    run_async(write_files(fleet, {path: text}, f"cannot write {path}"))
    click.echo(f"wrote {path} ({form}, {len(fleet.nodes)} node(s)) on every node")
