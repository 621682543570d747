"""`trainfleet sandbox`: a real cluster on this machine, and faults to break it with."""

from __future__ import annotations

import json
from pathlib import Path

import click

from trainfleet.cli.app import cli, echo_err, fleet_option


@cli.group()
def sandbox() -> None:
    """A real multi-node cluster on this Linux machine (network namespaces, one sshd per node)."""


@sandbox.command(name="up")
@click.option("--nodes", "count", type=int, default=2, show_default=True)
@click.option("--name", default="tf", show_default=True, help="several sandboxes can coexist under different names")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="where to write its fleet file")
@click.option("--slots", type=int, default=2, show_default=True, help="slots per node in the fleet file")
@click.option("--private-network", is_flag=True,
              help="add a second network for training traffic, with NIC names that differ between nodes")
@click.option("--ssh-port", type=int, default=22, show_default=True, help="the port every node's sshd listens on")
@click.option("--password-auth", is_flag=True, help="let users other than root log in with a password")
@click.option("--slurm", is_flag=True, help="also run a real Slurm on it: a controller and a slurmd per node")
@click.option("--docker", is_flag=True, help="a dockerd on every node, and jobs run in its containers")
@click.option("--fake-gpus", type=int, default=0, show_default=True, metavar="N",
              help="N GPUs per node that answer like real ones (an nvidia-smi and a kernel log per node); "
                   "`sandbox fault gpu` breaks them")
def sandbox_up(count: int, name: str, out: Path | None, slots: int, private_network: bool, ssh_port: int,
               password_auth: bool, slurm: bool, docker: bool, fake_gpus: int) -> None:
    """Create the cluster and print the path of its fleet file."""
    from trainfleet.sandbox import cluster

    state = cluster.up(count, name=name, out=out, slots=slots, private_network=private_network, ssh_port=ssh_port,
                       password_auth=password_auth, slurm=slurm, docker=docker, fake_gpus=fake_gpus)
    echo_err(f"sandbox {state.name}: {len(state.nodes)} node(s) on {state.subnet}"
             + (f", training network {state.private_subnet}" if state.private_subnet else ""))
    if state.slurm_conf:
        echo_err(f"sandbox {state.name}: Slurm is up, its nodes idle; point sbatch, srun and sinfo at it with "
                 f"`export SLURM_CONF={state.slurm_conf}`, and keep job files outside /tmp (private to each node)")
    if state.docker:
        echo_err(f"sandbox {state.name}: every node runs its own dockerd with the image "
                 f"trainfleet-sandbox/python3:bookworm; the fleet file's `container:` runs jobs in it, with this "
                 f"Python environment mounted read-only")
    shared = cluster.controller_python_under_tmp()
    if shared:
        echo_err(f"sandbox {state.name}: this Python lives under /tmp ({shared}), which is private to each node; "
                 f"it is mounted read-only at the same path on every node (real machines need their own)")
    click.echo(state.fleet_file)


@sandbox.command(name="down")
@click.option("--name", default="tf", show_default=True)
@click.option("--all", "everything", is_flag=True, help="remove every sandbox")
def sandbox_down(name: str, everything: bool) -> None:
    """Remove every namespace, link, process and file of the sandbox."""
    from trainfleet.sandbox import cluster

    names = [s.name for s in cluster.list_states()] if everything else [name]
    for each in names:
        removed = cluster.down(each, missing_ok=everything)
        click.echo(f"sandbox {each}: removed {len(removed)} item(s)")


@sandbox.command(name="status")
@click.option("--name", help="one sandbox (default: all)")
@click.option("--json", "as_json", is_flag=True)
def sandbox_status(name: str | None, as_json: bool) -> None:
    """List sandboxes and, per node, namespace, addresses and sshd pid."""
    from trainfleet.sandbox import cluster

    report = cluster.status(name)
    if as_json:
        click.echo(json.dumps(report if name is None else report[0], indent=2))
        return
    if not report:
        click.echo("no sandboxes")
    for entry in report:
        click.echo(f"{entry['name']}: subnet {entry['subnet']}, fleet file {entry['fleet_file']}")
        for node in entry["nodes"]:  # type: ignore[union-attr]
            state = "up" if node["sshd_running"] else "DOWN"
            click.echo(f"  {node['name']:8} {node['namespace']:18} {node['address']:15} "
                       f"{node['interface']:7} sshd {node['sshd_pid']} {state}")


@sandbox.group(name="fault")
def sandbox_fault() -> None:
    """Break a sandbox node on purpose (and `clear` it): see what doctor and run say.

    NODE is a node name of the fleet file (-f, $TRAINFLEET_FLEET or ./fleet.yaml), or of
    the sandbox named with --name."""


sandbox_name = click.option("--name", help="the sandbox (default: the one holding the fleet's nodes, else tf)")


def _target(name: str | None, fleet_file: str | None, node: str | None) -> tuple[str, str | None]:
    """(sandbox name, sandbox node name) for a node named as the fleet names it."""
    from trainfleet.fleet import fleet_path, load_fleet
    from trainfleet.sandbox import cluster

    if name:
        return name, node
    path = fleet_path(fleet_file)
    if not path.is_file():
        return "tf", node
    fleet = load_fleet(path)
    state, mapping = cluster.find_for_fleet([(n.name, n.host, n.port) for n in fleet.nodes])
    if node is None:
        return state.name, None
    fleet.node(node)  # names the fleet's nodes when there is no such one
    return state.name, mapping[node].name


def _inject(name: str | None, fleet_file: str | None, node: str, kind_name: str, **params: object) -> None:
    from trainfleet.sandbox.faults import FaultKind, inject

    sandbox_name_, node_name = _target(name, fleet_file, node)
    assert node_name is not None
    fault = inject(sandbox_name_, node_name, FaultKind(kind_name), **params)  # type: ignore[arg-type]
    click.echo(f"sandbox {sandbox_name_}: {node}: {fault.kind.value} ({fault.detail})")


@sandbox_fault.command(name="block-port")
@click.argument("node")
@click.argument("port", type=int)
@click.option("--mode", type=click.Choice(["drop", "reject"]), default="drop", show_default=True)
@sandbox_name
@fleet_option
def fault_block_port(node: str, port: int, mode: str, name: str | None, fleet_file: str | None) -> None:
    """Firewall incoming TCP PORT on NODE (DROP: silence; REJECT: refused)."""
    _inject(name, fleet_file, node, "block-port", port=port, mode=mode)


@sandbox_fault.command(name="controller-link")
@click.argument("node")
@click.option("--mode", type=click.Choice(["drop", "reset"]), default="drop", show_default=True,
              help="drop: silence (a laptop's Wi-Fi gone); reset: connections closed at once (a VPN reconnecting)")
@sandbox_name
@fleet_option
def fault_controller_link(node: str, mode: str, name: str | None, fleet_file: str | None) -> None:
    """Cut the controller's SSH link to NODE, both ways; the training network stays up."""
    _inject(name, fleet_file, node, "controller-link", mode=mode)


@sandbox_fault.command(name="cap")
@click.argument("node")
@click.argument("rate")
@sandbox_name
@fleet_option
def fault_cap(node: str, rate: str, name: str | None, fleet_file: str | None) -> None:
    """Cap NODE's links at RATE (e.g. 100mbit) in both directions; NODE `controller`: this machine's link to
    the nodes (what `push` must not multiply)."""
    _inject(name, fleet_file, node, "cap", rate=rate)


@sandbox_fault.command(name="latency")
@click.argument("node")
@click.argument("delay")
@sandbox_name
@fleet_option
def fault_latency(node: str, delay: str, name: str | None, fleet_file: str | None) -> None:
    """Delay every packet NODE sends by DELAY (e.g. 50ms); needs the kernel's netem."""
    _inject(name, fleet_file, node, "latency", delay=delay)


@sandbox_fault.command(name="cut")
@click.argument("node")
@sandbox_name
@fleet_option
def fault_cut(node: str, name: str | None, fleet_file: str | None) -> None:
    """Take NODE's network links down."""
    _inject(name, fleet_file, node, "cut")


@sandbox_fault.command(name="fill-disk")
@click.argument("node")
@click.option("--path", default=None, metavar="DIR",
              help="the directory to fill (default: the workdir); e.g. a container engine's data root")
@click.option("--docker-data-root", is_flag=True, help="fill the node's Docker data root (a `--docker` sandbox)")
@sandbox_name
@fleet_option
def fault_fill_disk(node: str, path: str | None, docker_data_root: bool, name: str | None,
                    fleet_file: str | None) -> None:
    """Replace NODE's workdir (or --path) with a small tmpfs that is full."""
    _inject(name, fleet_file, node, "fill-disk", **({"path": path} if path else {}),
            **({"docker_data_root": True} if docker_data_root else {}))


@sandbox_fault.command(name="kill")
@click.argument("node")
@sandbox_name
@fleet_option
def fault_kill(node: str, name: str | None, fleet_file: str | None) -> None:
    """Kill every process of NODE, sshd included (`clear` boots it again)."""
    _inject(name, fleet_file, node, "kill")


@sandbox_fault.command(name="slow-cpu")
@click.argument("node")
@click.argument("share")
@sandbox_name
@fleet_option
def fault_slow_cpu(node: str, share: str, name: str | None, fleet_file: str | None) -> None:
    """Hold every process of NODE to SHARE of one CPU (e.g. 30%): a straggler."""
    _inject(name, fleet_file, node, "slow-cpu", share=share)


@sandbox_fault.command(name="gpu")
@click.argument("node")
@click.option("--gpu", "index", type=int, default=0, show_default=True, help="which of the node's GPUs")
@click.option("--xid", type=int, help="write this Xid event to the node's kernel log (79: fallen off the bus)")
@click.option("--ecc", type=int, default=0, help="add this many uncorrected ECC errors")
@click.option("--pcie-width", type=int, help="the link's width now (x16 at most)")
@click.option("--row-remap-pending", is_flag=True, help="a row remap waits for the next reset")
@click.option("--slowdown", type=click.Choice(["hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"]),
              help="clocks held down for this hardware reason")
@click.option("--nvlink-down", type=int, metavar="LINK", help="this NVLink link of the GPU goes down")
@sandbox_name
@fleet_option
def fault_gpu(node: str, index: int, xid: int | None, ecc: int, pcie_width: int | None, row_remap_pending: bool,
              slowdown: str | None, nvlink_down: int | None, name: str | None, fleet_file: str | None) -> None:
    """Break one of NODE's fake GPUs (a sandbox made with --fake-gpus)."""
    _inject(name, fleet_file, node, "gpu", gpu={"gpu": index, "xid": xid, "ecc": ecc, "pcie_width": pcie_width,
                                                 "remap_pending": row_remap_pending, "slowdown": slowdown or "",
                                                 "nvlink_down": nvlink_down})


@sandbox_fault.command(name="clear")
@click.argument("node", required=False)
@sandbox_name
@fleet_option
def fault_clear(node: str | None, name: str | None, fleet_file: str | None) -> None:
    """Undo the faults of NODE (default: of every node)."""
    from trainfleet.sandbox.faults import clear

    sandbox_name_, node_name = _target(name, fleet_file, node)
    undone = clear(sandbox_name_, node_name)
    click.echo(f"sandbox {sandbox_name_}: cleared {len(undone)} fault(s)"
               + "".join(f"\n  {node or f.node}: {f.kind.value} ({f.detail})" for f in undone))


@sandbox_fault.command(name="list")
@sandbox_name
@fleet_option
def fault_list(name: str | None, fleet_file: str | None) -> None:
    """List the faults in force."""
    from trainfleet.sandbox.state import load_state
    from trainfleet.sandbox.faults import active

    sandbox_name_, _ = _target(name, fleet_file, None)
    faults = active(load_state(sandbox_name_))
    click.echo("\n".join(f"{f.node}: {f.kind.value} ({f.detail})" for f in faults) or "no faults")


