"""Running a planned launch inside a container on each node: a pure rewrite of the plan.

What multi-node training needs from the engine: the host's network (ranks reach each
other at the nodes' addresses, on any port), the host's IPC namespace (NCCL's shared
memory), the GPUs when the node has them, the project and job directories at the same
paths, and the job's environment passed by name (`-e NAME`: values come from the
engine's own environment, never from its command line). Secrets are not passed so: the
engine would keep their values in the container's configuration, on its data root's
disk, for the container's life (and after a crash). The node's in-memory secrets file is
mounted read-only instead, and a line of Python in the container puts them in the
environment and runs the command. The container is named after the job and node, and
removed when the job ends however it ended.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from trainfleet.agent.records import secrets_path
from trainfleet.errors import UsageError
from trainfleet.fleet.model import Container, Fleet
from trainfleet.job.plan import LaunchPlan, job_path
from trainfleet.shellwords import shell_word

SECRETS_SHIM = ("import json,os,sys; os.environ.update(json.load(open(sys.argv[1]))); "
                "os.execvp(sys.argv[2], sys.argv[2:])")
"""Run inside the container by its Python: the secrets file's variables, then the command."""


def container_name(job_id: str, node: str) -> str:
    return f"tf-{job_id}-{node}"


def engine(container: Container) -> list[str]:
    return [container.engine, *container.engine_options]


def data_root(container: Container) -> str:
    """The data root the engine options name (`--root DIR`), else "" (the engine's default)."""
    options = list(container.engine_options)
    for index, option in enumerate(options):
        if option == "--root" and index + 1 < len(options):
            return options[index + 1]
        if option.startswith("--root="):
            return option.split("=", 1)[1]
    return ""


def run_argv(container: Container, name: str, inner: Iterable[str], cwd: str, env_names: Iterable[str],
             mounts: Iterable[str], gpus: bool, secrets_file: str = "") -> list[str]:
    # No log of the engine's own (`--log-driver=none`): it would keep the job's output, secrets
    # a script printed included, on its disk; trainfleet keeps the output, redacted.
    argv = [*engine(container), "run", "--rm", f"--name={name}", "--network=host", "--ipc=host", "--log-driver=none"]
    if gpus:
        argv.append("--gpus=all" if container.engine == "docker" else "--device=nvidia.com/gpu=all")
    for mount in dict.fromkeys(mounts):
        argv += ["-v", f"{mount}:{mount}"]
    if secrets_file:
        argv += ["-v", f"{secrets_file}:{secrets_file}:ro"]
        inner = [container.python, "-c", SECRETS_SHIM, secrets_file, *inner]
    argv += ["-w", cwd]
    for name_ in dict.fromkeys(env_names):
        argv += ["-e", name_]
    argv += list(container.options)
    argv += ["--rootfs", container.rootfs] if container.rootfs else [container.image]
    return argv + list(inner)


def remove_argv(container: Container, name: str) -> list[str]:
    return [*engine(container), "rm", "-f", name]


def check_image(container: Container) -> str:
    """A shell command: the image is there, or is pulled now (a rootfs: it exists)."""
    tool = " ".join(shell_word(w) for w in engine(container))
    if container.rootfs:
        missing = shell_word(f"no root file system {container.rootfs}")
        return f"test -d {shell_word(container.rootfs)} || {{ echo {missing} >&2; exit 1; }}"
    image = shell_word(container.image)
    return f"{tool} image inspect {image} >/dev/null 2>&1 || {tool} pull {image}"


def absolute(path: str, home: str) -> str:
    """The engine needs absolute paths: a leading ~/ is the node's home (kept as it is
    where the home is not known: in a dry run)."""
    if home and (path == "~" or path.startswith("~/")):
        return home.rstrip("/") + path[1:]
    return path


def containerize(plan: LaunchPlan, fleet: Fleet, homes: Mapping[str, str], gpus: Mapping[str, int]) -> LaunchPlan:
    """Each node's command run inside the fleet's container instead of on the node."""
    container = fleet.container
    assert container is not None
    if plan.prepare or any(launch.site for launch in plan.nodes):
        raise UsageError(f"--launcher {plan.launcher} starts its runner's processes on the nodes themselves, outside "
                         f"any container", fix="use --launcher deepspeed (DeepSpeed's launcher in the container on "
                                               "every node), or leave out `container:`")
    launches = []
    for launch in plan.nodes:
        home = homes.get(launch.node, "")
        cwd = absolute(launch.cwd, home)
        inner = [absolute(word, home) for word in launch.argv]
        if inner and inner[0] == fleet.python:
            inner[0] = container.python
        # Every variable the plan names, passed in by name; the secrets through their file.
        names = [k for k, _ in launch.env] + [n for n in launch.filled if n not in fleet.secrets]
        name = container_name(plan.job_id, launch.node)
        secrets_file = secrets_path(plan.job_id, launch.node) if fleet.secrets else ""
        argv = run_argv(container, name, inner, cwd, names,
                        [cwd, absolute(job_path(fleet.workdir, plan.job_id), home)], gpus.get(launch.node, 0) > 0,
                        secrets_file)
        launches.append(dataclasses.replace(launch, argv=tuple(argv), after=(tuple(remove_argv(container, name)),),
                                            secrets_file=bool(secrets_file)))
    return dataclasses.replace(plan, nodes=tuple(launches),
                               rendezvous=f"{plan.rendezvous}, in {container.image or container.rootfs}")


def setup_argv(fleet: Fleet, job_id: str, node: str, script: str, cwd: str, env_names: Iterable[str],
               gpus: bool) -> list[str]:
    """The setup script inside the container, in the project directory (mounted)."""
    container = fleet.container
    assert container is not None
    secrets_file = secrets_path(job_id, node) if fleet.secrets else ""
    return run_argv(container, container_name(job_id, node), ["sh", "-c", script], cwd,
                    [n for n in env_names if n not in fleet.secrets], [cwd], gpus, secrets_file)

