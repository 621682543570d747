"""The `trainfleet` command. User mistakes end here as one line and a non-zero exit code."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import NoReturn

import click

from trainfleet.errors import TrainfleetError, UsageError

FLEET_HELP = "fleet file (default ./fleet.yaml, or $TRAINFLEET_FLEET)"
fleet_option = click.option("-f", "--fleet", "fleet_file", metavar="FILE", help=FLEET_HELP)
nodes_option = click.option("-n", "--nodes", "node_names", metavar="NAMES",
                            help="comma-separated node names (default: all)")


def _load(fleet_file: str | None):  # type: ignore[no-untyped-def]
    from trainfleet.spec import fleet_path, load_fleet

    return load_fleet(fleet_path(fleet_file))


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _echo_err(text: str) -> None:
    click.echo(text, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trainfleet")
def cli() -> None:
    """Run torchrun jobs on every machine of a fleet over SSH."""


# ---- fleet files -------------------------------------------------------------------


@cli.command()
@click.option("-o", "--out", default="fleet.yaml", show_default=True, help="where to write it")
@click.option("--force", is_flag=True, help="overwrite an existing file")
def init(out: str, force: bool) -> None:
    """Write a commented fleet.yaml to start from."""
    from trainfleet.templates import FLEET_TEMPLATE

    _write_new(Path(out), FLEET_TEMPLATE, force)
    click.echo(f"wrote {out}: list your machines under `nodes:`, then run `trainfleet exec -- hostname`")


def _write_new(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise UsageError(f"{path} already exists", fix="pass --force to overwrite it, or -o another file")
    from trainfleet.files import write_atomically

    write_atomically(path, text)


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
    from trainfleet.errors import SpecError
    from trainfleet.importing import SSHConfig, parse_hostfile
    from trainfleet.fleetfile import dump_fleet_yaml, fleet_from_data

    try:
        text = hostfile.read_text()
    except OSError as exc:
        raise SpecError(f"{hostfile}: cannot read hostfile: {exc.strerror}") from None
    config = SSHConfig.load(ssh_config) if ssh_config else SSHConfig.load_default()
    data = parse_hostfile(text, str(hostfile), config)
    fleet = fleet_from_data(data, str(hostfile))
    _write_new(Path(out), f"# imported from {hostfile}\n" + dump_fleet_yaml(data), force)
    click.echo(f"wrote {out} with {len(fleet.nodes)} node(s), {sum(n.slots for n in fleet.nodes)} slot(s)")


@import_group.command(name="ssh-config")
@click.argument("aliases", nargs=-1)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="default ~/.ssh/config")
@click.option("--slots", default=1, show_default=True, type=int, help="processes (GPUs) per node")
@click.option("-o", "--out", default="fleet.yaml", show_default=True)
@click.option("--force", is_flag=True, help="overwrite an existing file")
def import_ssh_config(aliases: tuple[str, ...], config_path: Path | None, slots: int, out: str, force: bool) -> None:
    """Host aliases (all concrete ones if none are named)."""
    from trainfleet.importing import SSHConfig, fleet_data_from_ssh_config
    from trainfleet.fleetfile import dump_fleet_yaml, fleet_from_data

    config = SSHConfig.load(config_path) if config_path else SSHConfig.load_default()
    data = fleet_data_from_ssh_config(config, list(aliases), slots)
    fleet = fleet_from_data(data, config.source)
    _write_new(Path(out), f"# imported from {config.source}\n" + dump_fleet_yaml(data), force)
    click.echo(f"wrote {out} with {len(fleet.nodes)} node(s)")


@cli.command(name="check")
@fleet_option
def check_fleet(fleet_file: str | None) -> None:
    """Validate the fleet file and print the resolved nodes."""
    fleet = _load(fleet_file)
    for node in fleet.nodes:
        via = f" via {node.jump}" if node.jump else ""
        click.echo(f"{node.name}: {node.ssh_target}{via} slots={node.slots} address={node.address}"
                   f" interface={node.interface or '(detected at launch)'}")


# ---- remote commands ---------------------------------------------------------------


@cli.command(name="exec", context_settings={"ignore_unknown_options": True})
@fleet_option
@nodes_option
@click.option("--json", "as_json", is_flag=True, help="print one JSON document with every node's result")
@click.option("--timeout", type=float, help="seconds before a node's command is abandoned")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(fleet_file: str | None, node_names: str | None, as_json: bool, timeout: float | None,
                 command: tuple[str, ...]) -> None:
    """Run a shell command on every node at once (like pdsh): `trainfleet exec -- nvidia-smi -L`."""
    fleet = _load(fleet_file)
    nodes = fleet.select(_names(node_names))
    from trainfleet.remote import start_tcp

    sockets = start_tcp(nodes[:fleet.ssh.fanout])
    from trainfleet.remote import run_on_nodes

    text = " ".join(command)

    def show(node: str, stream: str, line: str) -> None:
        click.echo(f"{node}: {line}", err=stream == "stderr")

    result = asyncio.run(run_on_nodes(fleet, nodes, text, on_output=None if as_json else show, timeout=timeout,
                                      sockets=sockets))
    if as_json:
        click.echo(json.dumps({"ok": result.ok, "nodes": [r.to_json() for r in result.results]}, indent=2))
    else:
        for nodes_folded, reason in result.grouped_failures():
            _echo_err(f"trainfleet: {nodes_folded}: {reason}")
    sys.exit(result.exit_code())


@cli.command()
@fleet_option
@nodes_option
@click.argument("source", default=".", type=click.Path(file_okay=False, exists=True, path_type=Path))
def sync(fleet_file: str | None, node_names: str | None, source: Path) -> None:
    """Copy a directory (default: the current one) into every node's workdir with rsync."""
    fleet = _load(fleet_file)
    _sync(fleet, fleet.select(_names(node_names)), source)


def _sync(fleet, nodes, source: Path) -> None:  # type: ignore[no-untyped-def]
    from trainfleet.sync import sync_code

    resolved = source.resolve()
    if resolved == Path("/") or resolved == Path.home().resolve():
        raise UsageError(f"refusing to sync {resolved} to every node",
                         fix="run from your project directory, or pass --sync-dir DIR")
    result = asyncio.run(sync_code(fleet, nodes, resolved))
    if not result.ok:
        reasons = "; ".join(f"{n}: {r}" for n, r in result.grouped_failures())
        raise TrainfleetError(f"sync of {resolved} failed on {reasons}")
    slowest = max(r.seconds for r in result.results)
    click.echo(f"[trainfleet] synced {resolved} to {fleet.workdir} on {len(nodes)} node(s) in {slowest:.1f}s",
               err=True)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@fleet_option
@click.option("--nproc-per-node", type=int, help="processes per node (default: each node's slots)")
@click.option("-m", "--module", is_flag=True, help="SCRIPT is a Python module name, as in `python -m`")
@click.option("--port", type=int, help="rendezvous port on node 0 (default: 29500 if free, else any free one)")
@click.option("--dry-run", is_flag=True, help="print every node's exact command and environment, run nothing")
@click.option("--json", "as_json", is_flag=True, help="with --dry-run: print the plan as JSON")
@click.option("--sync-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), default=".",
              show_default=True, help="directory copied into the workdir before launch")
@click.option("--no-sync", is_flag=True, help="the code is already on the nodes")
@click.option("--max-restarts", type=int, default=0, show_default=True, help="torchrun's restarts on failure")
@click.option("--log-dir", type=click.Path(file_okay=False, path_type=Path),
              help="where per-node logs go (default ./trainfleet-runs/JOB_ID)")
@click.option("--grace", type=float, default=10.0, show_default=True,
              help="seconds between SIGTERM and SIGKILL at teardown")
@click.option("--job-id", help="rendezvous id and log name (default: tf-DATE-TIME-RANDOM)")
@click.argument("script")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def run(fleet_file: str | None, nproc_per_node: int | None, module: bool, port: int | None, dry_run: bool,
        as_json: bool, sync_dir: Path, no_sync: bool, max_restarts: int, log_dir: Path | None, grace: float,
        job_id: str | None, script: str, args: tuple[str, ...]) -> None:
    """Start SCRIPT on every node with torchrun and stream every rank's output."""
    from trainfleet.plan import DEFAULT_RDZV_PORT, Job, LaunchFacts, new_job_id, plan_torchrun

    fleet = _load(fleet_file)
    job = Job(entrypoint=script, args=args, module=module, nproc_per_node=nproc_per_node,
              max_restarts=max_restarts, job_id=job_id or new_job_id())
    if dry_run:
        plan = plan_torchrun(fleet, job, LaunchFacts(rdzv_port=port or DEFAULT_RDZV_PORT))
        click.echo(json.dumps(plan.to_json(), indent=2) if as_json else plan.render(), nl=as_json)
        return
    sys.exit(_launch(fleet, job, port=port, sync_dir=None if no_sync else sync_dir, log_dir=log_dir, grace=grace))


def _launch(fleet, job, *, port: int | None, sync_dir: Path | None, log_dir: Path | None,  # type: ignore[no-untyped-def]
            grace: float, printer=None) -> int:
    from trainfleet.plan import plan_torchrun
    from trainfleet.supervise import Supervisor, probe_facts

    secrets = _secret_values(fleet)
    if sync_dir is not None:
        _sync(fleet, fleet.nodes, sync_dir)
    facts = asyncio.run(probe_facts(fleet, port))
    plan = plan_torchrun(fleet, job, facts)
    logs = log_dir or Path("trainfleet-runs") / job.job_id
    click.echo(f"[trainfleet] job {plan.job_id}: {plan.world_size} process(es) on {len(plan.nodes)} node(s), "
               f"rendezvous {plan.rdzv_endpoint}, logs in {logs}", err=True)
    outcome = asyncio.run(_supervise(Supervisor(fleet, plan, logs, printer or _print_line, grace=grace,
                                                secrets=secrets)))
    if outcome.left_running:
        leftovers = "; ".join(f"{node}: pids {[p['pid'] for p in procs]}" for node, procs in outcome.left_running.items())
        raise TrainfleetError(f"job {plan.job_id}: processes still running after teardown ({leftovers})",
                              fix="end them by hand with `trainfleet exec -- kill -9 PID`")
    if outcome.cancelled:
        _echo_err(f"trainfleet: job {plan.job_id} cancelled; stopped on every node, nothing left running")
    elif outcome.failure is not None:
        failure = outcome.failure
        _echo_err(f"trainfleet: job {plan.job_id}: {failure.describe()}; every node stopped. Last output:")
        for line in failure.tail.splitlines():
            _echo_err(f"  | {line}")
        _echo_err(f"trainfleet: full logs in {logs}")
    else:
        _echo_err(f"trainfleet: job {plan.job_id} finished on every node in {outcome.seconds:.1f}s")
    return outcome.exit_code


def _secret_values(fleet) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Each secret from this process's environment, else typed at a prompt; never stored."""
    import getpass

    values = {}
    for name in fleet.secrets:
        value = os.environ.get(name)
        if value is None:
            if not sys.stdin.isatty():
                raise UsageError(f"{fleet.source}: secret {name} has no value",
                                 fix=f"export {name}=... before running, or run from a terminal to be asked")
            value = getpass.getpass(f"{name} (secret, not echoed): ")
        values[name] = value
    return values


def _print_line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def _supervise(supervisor):  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, supervisor.cancel.set)
    try:
        return await supervisor.run()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


# ---- doctor ------------------------------------------------------------------------


@cli.command()
@fleet_option
@click.option("--port", type=int, default=29500, show_default=True, help="rendezvous port to test on node 0")
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON")
@click.option("--all", "show_all", is_flag=True, help="also list the checks that passed")
def doctor(fleet_file: str | None, port: int, as_json: bool, show_all: bool) -> None:
    """Find what is broken before GPU time is spent: node, cause and fix for each problem."""
    from trainfleet.doctor import examine
    from trainfleet.render import doctor_table

    fleet = _load(fleet_file)
    report = asyncio.run(examine(fleet, rdzv_port=port))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(doctor_table(report, show_all=show_all))
    sys.exit(0 if report.ok else 1)


# ---- benchmarks ----------------------------------------------------------------------


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
@click.option("-v", "--verbose", is_flag=True, help="also show every rank's output")
def bench_net(fleet_file: str | None, min_size: str, max_size: str, p2p_size: str, nproc_per_node: int,
              min_iters: int, seconds_per_size: float, port: int | None, as_json: bool, verbose: bool) -> None:
    """All-reduce bandwidth (algbw, busbw) from --min-size to --max-size through torch.distributed
    (gloo on CPU, NCCL on GPU), and a point-to-point matrix that names the slowest link."""
    from trainfleet.netbench import JOB_DIR, REMOTE_JOB_DIR, NetBenchResult, job_args, parse_size, size_ladder
    from trainfleet.plan import Job, new_job_id
    from trainfleet.sync import sync_code

    fleet = _load(fleet_file)
    sizes = size_ladder(parse_size(min_size), parse_size(max_size))
    result = asyncio.run(sync_code(fleet, fleet.nodes, JOB_DIR, f"{fleet.workdir.rstrip('/')}/{REMOTE_JOB_DIR}"))
    if not result.ok:
        raise TrainfleetError("copying the benchmark job failed: " + "; ".join(
            f"{n}: {r}" for n, r in result.grouped_failures()))
    numbers = NetBenchResult()

    def collect(line: str) -> None:
        if not numbers.take(line) and verbose:
            _print_line(line)

    job = Job(entrypoint=f"{REMOTE_JOB_DIR}/netbench.py", nproc_per_node=nproc_per_node, job_id=new_job_id(),
              args=job_args(sizes, parse_size(p2p_size), min_iters, seconds_per_size))
    code = _launch(fleet, job, port=port, sync_dir=None, log_dir=None, grace=5.0, printer=collect)
    if code == 0:
        click.echo(json.dumps(numbers.to_json(), indent=2) if as_json else numbers.render())
    sys.exit(code)


# ---- ssh trust -----------------------------------------------------------------------


@cli.group(name="ssh")
def ssh_group() -> None:
    """Trust between all nodes (one fleet key, pinned host keys), checked and revocable."""


@ssh_group.command(name="setup")
@fleet_option
@click.option("--yes", is_flag=True, help="trust host keys seen for the first time without asking")
@click.option("--ask-password", is_flag=True, help="nodes that refuse your keys get a password prompt "
              "(typed once, never stored); the default when run from a terminal")
@click.option("--hosts-file", is_flag=True, help="also add node names to /etc/hosts on every node (needs root)")
def ssh_setup(fleet_file: str | None, yes: bool, ask_password: bool, hosts_file: bool) -> None:
    """Install one fleet key so every node reaches every node; pin host keys; write an ssh_config."""
    import getpass

    from trainfleet.trust import setup

    fleet = _load(fleet_file)
    interactive = sys.stdin.isatty()

    def confirm(fingerprints: str) -> bool:
        click.echo(f"host keys seen for the first time:\n{fingerprints}", err=True)
        if yes:
            return True
        if not interactive:
            return False
        return click.confirm("trust them?", default=False, err=True)

    def prompt(node) -> str:  # type: ignore[no-untyped-def]
        return getpass.getpass(f"password for {node.user}@{node.host} (used once, not stored): ")

    report = asyncio.run(setup(fleet, confirm=confirm, ask_password=prompt if ask_password or interactive else None,
                               hosts_file=hosts_file))
    for key in report.host_keys:
        click.echo(f"{key.node}: host key {key.key_type} {key.fingerprint} ({'pinned' if key.status == 'pinned' else 'now pinned'})")
    total = sum(len(files) for files in report.changed.values())
    for node, files in report.changed.items():
        if files:
            click.echo(f"{node}: updated {', '.join(files)}")
    click.echo(f"fleet key tag {report.key.tag}: {total} file(s) changed on the nodes"
               + ("" if total else " (already set up)"))
    ssh_config = Path(fleet.ssh.fleet_dir) / "ssh_config"
    click.echo(f"your own tools: ssh -F {ssh_config} {fleet.head.name}  (pdsh: PDSH_SSH_ARGS_APPEND='-F {ssh_config}')")
    if report.errors:
        for node, error in report.errors.items():
            _echo_err(f"trainfleet: {node}: {error}")
        sys.exit(1)


@ssh_group.command(name="check")
@fleet_option
@click.option("--json", "as_json", is_flag=True)
def ssh_check(fleet_file: str | None, as_json: bool) -> None:
    """Verify the N×N matrix: every node sshes to every node (itself included) at once."""
    from trainfleet.trust import check

    fleet = _load(fleet_file)
    matrix = asyncio.run(check(fleet))
    missing = [(src, dst, r.get("error")) for src, row in matrix.items() for dst, r in row.items() if not r["ok"]]
    if as_json:
        click.echo(json.dumps({"ok": not missing, "matrix": matrix}, indent=2))
    else:
        pairs = len(fleet.nodes) ** 2
        click.echo(f"{pairs - len(missing)}/{pairs} node pairs can ssh to each other")
        for src, dst, error in missing:
            reason = (error or ["?"])[-1] if isinstance(error, list) else error
            click.echo(f"  missing: {src} -> {dst}: {reason}")
        if missing:
            click.echo("fix: run `trainfleet ssh setup`")
    sys.exit(1 if missing else 0)


@ssh_group.command(name="revoke")
@fleet_option
def ssh_revoke(fleet_file: str | None) -> None:
    """Remove from every node exactly what `ssh setup` added, and nothing else."""
    from trainfleet.trust import revoke

    fleet = _load(fleet_file)
    removed = asyncio.run(revoke(fleet))
    for node, files in removed.items():
        click.echo(f"{node}: removed {len(files)} item(s)" + (f": {', '.join(files)}" if files else ""))


# ---- firewall ----------------------------------------------------------------------


@cli.group(name="firewall")
def firewall_group() -> None:
    """Open exactly the ports training needs between fleet nodes (never `ufw disable`)."""


def _firewall_plan(fleet, port: int):  # type: ignore[no-untyped-def]
    from trainfleet.firewall import plan_firewall
    from trainfleet.netchoice import choose
    from trainfleet.supervise import gather_facts

    result, answers = asyncio.run(gather_facts(fleet, {n.name: ["net"] for n in fleet.nodes}))
    if not result.ok:
        raise TrainfleetError("cannot plan the firewall: " + "; ".join(
            f"{n}: {r}" for n, r in result.grouped_failures()))
    choices = choose(fleet, answers)
    ranges = {n: tuple(a["port_range"]) for n, a in answers.items() if a.get("port_range")}  # type: ignore[misc]
    return plan_firewall(fleet, {n: c.address for n, c in choices.items()}, ranges, port)  # type: ignore[arg-type]


@firewall_group.command(name="plan")
@fleet_option
@click.option("--port", type=int, default=29500, show_default=True, help="the rendezvous port on node 0")
def firewall_plan(fleet_file: str | None, port: int) -> None:
    """Print the allow rules for every node, as iptables and nftables commands."""
    from trainfleet.firewall import fleet_tag, render

    fleet = _load(fleet_file)
    click.echo(render(_firewall_plan(fleet, port), fleet_tag(fleet)), nl=False)


def _firewall_action(fleet, action: str, plans=None) -> None:  # type: ignore[no-untyped-def]
    from trainfleet.firewall import fleet_tag
    from trainfleet.remote import run_agent_on_nodes

    rules = {p.node: [r.to_json() for r in p.rules] for p in plans or ()}
    result, answers = asyncio.run(run_agent_on_nodes(
        fleet, fleet.nodes, "firewall",
        lambda node: {"action": action, "tag": fleet_tag(fleet), "rules": rules.get(node.name, [])}))
    for node in fleet.nodes:
        answer = answers.get(node.name)
        if answer is None:
            continue
        changes = answer["added"] if action == "apply" else answer["removed"]
        note = " (no firewall is active: nothing to open)" if answer["backend"] == "none" and action == "apply" else ""
        click.echo(f"{node.name}: {answer['backend']}: {len(changes)} rule(s) {'added' if action == 'apply' else 'removed'}{note}")  # type: ignore[arg-type]
    if not result.ok:
        for failed in result.failed:
            detail = " ".join(failed.tail(2).split())
            _echo_err(f"trainfleet: {failed.describe()}: firewall {action} failed{': ' + detail if detail else ''}")
        sys.exit(1)


@firewall_group.command(name="apply")
@fleet_option
@click.option("--port", type=int, default=29500, show_default=True, help="the rendezvous port on node 0")
def firewall_apply(fleet_file: str | None, port: int) -> None:
    """Insert the planned rules into each node's firewall (iptables or nftables); idempotent."""
    fleet = _load(fleet_file)
    _firewall_action(fleet, "apply", _firewall_plan(fleet, port))


@firewall_group.command(name="revoke")
@fleet_option
def firewall_revoke(fleet_file: str | None) -> None:
    """Remove the rules `firewall apply` added, and nothing else."""
    _firewall_action(_load(fleet_file), "revoke")


# ---- sandbox -----------------------------------------------------------------------


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
def sandbox_up(count: int, name: str, out: Path | None, slots: int, private_network: bool, ssh_port: int,
               password_auth: bool) -> None:
    """Create the cluster and print the path of its fleet file."""
    from trainfleet import sandbox as sb

    state = sb.up(count, name=name, out=out, slots=slots, private_network=private_network, ssh_port=ssh_port,
                  password_auth=password_auth)
    _echo_err(f"sandbox {state.name}: {len(state.nodes)} node(s) on {state.subnet}"
              + (f", training network {state.private_subnet}" if state.private_subnet else ""))
    click.echo(state.fleet_file)


@sandbox.command(name="down")
@click.option("--name", default="tf", show_default=True)
@click.option("--all", "everything", is_flag=True, help="remove every sandbox")
def sandbox_down(name: str, everything: bool) -> None:
    """Remove every namespace, link, process and file of the sandbox."""
    from trainfleet import sandbox as sb

    names = [s.name for s in sb.list_states()] if everything else [name]
    for each in names:
        removed = sb.down(each, missing_ok=everything)
        click.echo(f"sandbox {each}: removed {len(removed)} item(s)")


@sandbox.command(name="status")
@click.option("--name", help="one sandbox (default: all)")
@click.option("--json", "as_json", is_flag=True)
def sandbox_status(name: str | None, as_json: bool) -> None:
    """List sandboxes and, per node, namespace, addresses and sshd pid."""
    from trainfleet import sandbox as sb

    report = sb.status(name)
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
    """Break a sandbox node on purpose (and `clear` it): see what doctor and run say."""


sandbox_name = click.option("--name", default="tf", show_default=True, help="the sandbox")


def _inject(name: str, node: str, kind_name: str, **params: object) -> None:
    from trainfleet.faults import FaultKind, inject

    fault = inject(name, node, FaultKind(kind_name), **params)  # type: ignore[arg-type]
    click.echo(f"sandbox {name}: {fault.node}: {fault.kind.value} ({fault.detail})")


@sandbox_fault.command(name="block-port")
@click.argument("node")
@click.argument("port", type=int)
@click.option("--mode", type=click.Choice(["drop", "reject"]), default="drop", show_default=True)
@sandbox_name
def fault_block_port(node: str, port: int, mode: str, name: str) -> None:
    """Firewall incoming TCP PORT on NODE (DROP: silence; REJECT: refused)."""
    _inject(name, node, "block-port", port=port, mode=mode)


@sandbox_fault.command(name="cap")
@click.argument("node")
@click.argument("rate")
@sandbox_name
def fault_cap(node: str, rate: str, name: str) -> None:
    """Cap NODE's links at RATE (e.g. 100mbit) in both directions."""
    _inject(name, node, "cap", rate=rate)


@sandbox_fault.command(name="latency")
@click.argument("node")
@click.argument("delay")
@sandbox_name
def fault_latency(node: str, delay: str, name: str) -> None:
    """Delay every packet NODE sends by DELAY (e.g. 50ms)."""
    _inject(name, node, "latency", delay=delay)


@sandbox_fault.command(name="cut")
@click.argument("node")
@sandbox_name
def fault_cut(node: str, name: str) -> None:
    """Take NODE's network links down."""
    _inject(name, node, "cut")


@sandbox_fault.command(name="fill-disk")
@click.argument("node")
@sandbox_name
def fault_fill_disk(node: str, name: str) -> None:
    """Replace NODE's workdir with a small tmpfs that is full."""
    _inject(name, node, "fill-disk")


@sandbox_fault.command(name="kill")
@click.argument("node")
@sandbox_name
def fault_kill(node: str, name: str) -> None:
    """Kill every process of NODE, sshd included (`clear` boots it again)."""
    _inject(name, node, "kill")


@sandbox_fault.command(name="clear")
@click.argument("node", required=False)
@sandbox_name
def fault_clear(node: str | None, name: str) -> None:
    """Undo the faults of NODE (default: of every node)."""
    from trainfleet.faults import clear

    undone = clear(name, node)
    click.echo(f"sandbox {name}: cleared {len(undone)} fault(s)"
               + "".join(f"\n  {f.node}: {f.kind.value} ({f.detail})" for f in undone))


@sandbox_fault.command(name="list")
@sandbox_name
def fault_list(name: str) -> None:
    """List the faults in force."""
    from trainfleet.faults import active
    from trainfleet.sandbox import load_state

    faults = active(load_state(name))
    click.echo("\n".join(f"{f.node}: {f.kind.value} ({f.detail})" for f in faults) or "no faults")


# ---- demo --------------------------------------------------------------------------


@cli.command()
@click.option("--steps", type=int, default=60, show_default=True)
@click.option("--name", default="demo", show_default=True, help="sandbox name to use")
def demo(steps: int, name: str) -> None:
    """Sandbox up (2 nodes), train the example across both, show the loss falling, sandbox down."""
    from trainfleet import sandbox as sb
    from trainfleet.examples_path import example_dir
    from trainfleet.plan import Job, new_job_id
    from trainfleet.spec import load_fleet

    example = example_dir("charlm")
    state = sb.up(2, name=name, slots=2)
    try:
        fleet = load_fleet(Path(state.fleet_file))
        _echo_err(f"[trainfleet] sandbox {name}: 2 nodes ({', '.join(n.address for n in state.nodes)}); "
                  f"training {example.name} with 2 processes per node")
        job = Job(entrypoint="train.py", args=("--steps", str(steps), "--checkpoint-dir", "checkpoints"),
                  job_id=new_job_id())
        losses: list[str] = []

        def show(line: str) -> None:
            if line.startswith(f"[{fleet.head.name}:0] step ") and " loss " in line:
                losses.append(line.split(" loss ")[1].split()[0])
            _print_line(line)

        code = _launch(fleet, job, port=None, sync_dir=example, log_dir=None, grace=5.0, printer=show)
    finally:
        sb.down(name, missing_ok=True)
        _echo_err(f"[trainfleet] sandbox {name} removed")
    if code == 0 and len(losses) >= 2:
        _echo_err(f"[trainfleet] demo: loss fell from {losses[0]} to {losses[-1]} in {steps} steps across "
                  f"2 nodes x 2 processes")
    sys.exit(code)


def main() -> NoReturn:
    try:
        cli.main(standalone_mode=False)
    except TrainfleetError as exc:
        _echo_err(f"trainfleet: error: {exc.one_line()}")
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _echo_err("trainfleet: aborted")
        sys.exit(130)
    except click.ClickException as exc:
        _echo_err(f"trainfleet: error: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        _echo_err("trainfleet: interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug, not a user mistake: one line unless asked for more
        if os.environ.get("TRAINFLEET_DEBUG"):
            raise
        _echo_err(f"trainfleet: internal error: {type(exc).__name__}: {exc} "
                  f"(TRAINFLEET_DEBUG=1 shows the traceback; please report it)")
        sys.exit(70)
    sys.exit(0)


if __name__ == "__main__":
    main()
