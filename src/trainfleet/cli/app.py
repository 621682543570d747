"""The `trainfleet` command group and what its commands share."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from trainfleet.errors import UsageError

if TYPE_CHECKING:
    import asyncio

    from trainfleet.fleet.model import Fleet, Node

T = TypeVar("T")
FLEET_HELP = "fleet file (default ./fleet.yaml, or $TRAINFLEET_FLEET)"
fleet_option = click.option("-f", "--fleet", "fleet_file", metavar="FILE", help=FLEET_HELP)
nodes_option = click.option("-n", "--nodes", "node_names", metavar="NODES",
                            help="node names, comma-separated or folded (node[0-3],gpu7); default: all")


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs (or help lists it): start-up
    time is paid on every command, and most need one module of the CLI."""

    modules = {"bench": "bench", "check": "fleet", "demo": "demo", "doctor": "doctor", "exec": "exec", "export": "export",
               "firewall": "firewall", "hostfile": "fleet", "import": "fleet", "init": "fleet", "run": "run",
               "sandbox": "sandbox", "setup": "setup", "ssh": "ssh", "sync": "sync", "status": "jobs",
               "logs": "jobs", "stop": "jobs", "top": "jobs", "push": "push", "mount": "mount", "umount": "mount",
               "plot": "plot", "ui": "ui", "cordon": "fleet", "uncordon": "fleet", "pull": "pull", "clean": "clean"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.modules)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in self.modules:
            import importlib

            importlib.import_module(f"trainfleet.cli.{self.modules[name]}")
        return self.commands.get(name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trainfleet")
def cli() -> None:
    """From rented GPU machines to a training job on all of them: describe the fleet once,
    then doctor, ssh, sync, run.

    Shell completion: eval "$(_TRAINFLEET_COMPLETE=bash_source trainfleet)" (zsh_source, fish_source).
    """


def load(fleet_file: str | None, ssh: bool = True) -> Fleet:
    """The fleet; `ssh=False` for a command that reaches no node (its key files need not exist)."""
    from trainfleet.fleet import fleet_path, load_fleet

    return load_fleet(fleet_path(fleet_file), check_keys=ssh)


def select(fleet: Fleet, node_names: str | None) -> tuple[Node, ...]:
    from trainfleet.results import expand_nodes

    if not node_names:
        return fleet.nodes
    try:
        names = expand_nodes(node_names)
    except ValueError as exc:
        raise UsageError(f"-n {node_names}: {exc}", fix="write nodes as a,b or node[0-3]") from None
    return fleet.select(names)


def echo_err(text: str) -> None:
    click.echo(text, err=True)


def status(text: str) -> None:
    click.echo(f"[trainfleet] {text}", err=True)


def stdout_printer(closed_note: str = "") -> Callable[[str], None]:
    """Writes a line to stdout at once; when the reader has gone (`| head`, `| grep -q`),
    ends this process as a Unix tool ends on SIGPIPE, saying `closed_note` on stderr."""
    def emit(text: str) -> None:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            stdout_closed(closed_note)
    return emit


def stdout_closed(note: str = "") -> NoReturn:
    """Nothing is cleaned up here, on purpose: an attached job's node supervisors see this
    client's connections close and the job goes on (with --tether, it ends later), as when
    a terminal goes away; anything only read (logs, status) is left as it is."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to fail on
        if note:
            sys.stderr.write(f"trainfleet: {note}\n")
            sys.stderr.flush()
    except OSError:
        pass
    os._exit(141)  # 128 + SIGPIPE, what a shell reports for a tool that SIGPIPE ended


print_line = stdout_printer()


class StatusLine:
    """One line of per-node state redrawn in place on a terminal (`node[0-3] 45%`);
    elsewhere (CI, a pipe) nothing until `done`, so logs stay readable."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.states: dict[str, str] = {}
        self.live = sys.stderr.isatty()
        self.shown = 0

    def update(self, node: str, state: str) -> None:
        self.states[node] = state
        if not self.live:
            return
        from trainfleet.results import fold_nodes

        groups: dict[str, list[str]] = {}
        for name, value in self.states.items():
            groups.setdefault(value, []).append(name)
        text = f"{self.label}: " + "  ".join(f"{fold_nodes(n)} {v}" for v, n in groups.items())
        width = 200
        sys.stderr.write("\r" + text[:width].ljust(self.shown))
        sys.stderr.flush()
        self.shown = min(len(text), width)

    def done(self) -> None:
        if self.live and self.shown:
            sys.stderr.write("\r" + " " * self.shown + "\r")
            sys.stderr.flush()


def run_async(work: Coroutine[Any, Any, T]) -> T:
    """The one way a command runs its operation's coroutine."""
    import asyncio

    return asyncio.run(work)


def run_cancellable(make: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    """Run a coroutine; SIGINT and SIGTERM set the event it was given instead of raising."""
    import asyncio
    import signal

    async def main() -> T:
        cancel = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, cancel.set)
        try:
            return await make(cancel)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    return asyncio.run(main())


def secret_values(fleet: Fleet) -> dict[str, str]:
    """Each secret from this process's environment, else typed at a prompt; never stored."""
    import getpass
    import os

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


def refuse_stray_option(script: str, command: click.Command, usage: str = "SCRIPT [ARGS]...",
                        what: str = "your script") -> None:
    """`run --nproc 2 train.py`: an option the command does not know, before the script,
    would otherwise become the script (or reach the launcher, or run as a shell command)."""
    if not script.startswith("-"):
        return
    name = script.split("=", 1)[0]
    known = [o for param in command.params for o in getattr(param, "opts", []) if o.startswith("--")]
    close = [o for o in known if o.startswith(name)] or difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    raise UsageError(f"{command.name} has no option {name}",
                     fix=f"{hint}options for {what} go after it: trainfleet {command.name} [OPTIONS] {usage}")
