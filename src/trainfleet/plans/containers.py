"""Running a planned launch inside a container on each node: a pure rewrite of the plan.

What multi-node training needs from the engine: the host's network (ranks reach each
other at the nodes' addresses, on any port), the host's IPC namespace (NCCL's shared
memory), the GPUs when the node has them, the project and job directories at the same
paths, and the job's environment passed by name (`-e NAME`: values, secrets included,
come from the engine's own environment, never from its command line). The container is
named after the job and node, and removed when the job ends however it ended.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from trainfleet.errors import UsageError
from trainfleet.fleet.model import Container, Fleet
from trainfleet.job.plan import LaunchPlan, job_path
from trainfleet.shellwords import shell_word

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
             mounts: Iterable[str], gpus: bool) -> list[str]:
    argv = [*engine(container), "run", "--rm", f"--name={name}", "--network=host", "--ipc=host"]
    if gpus:
        argv.append("--gpus=all" if container.engine == "docker" else "--device=nvidia.com/gpu=all")
    for mount in dict.fromkeys(mounts):
        argv += ["-v", f"{mount}:{mount}"]
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
        names = [k for k, _ in launch.env] + list(launch.filled)  # every variable the plan names, passed in
        name = container_name(plan.job_id, launch.node)
        argv = run_argv(container, name, inner, cwd, names,
                        [cwd, absolute(job_path(fleet.workdir, plan.job_id), home)], gpus.get(launch.node, 0) > 0)
        launches.append(dataclasses.replace(launch, argv=tuple(argv), after=(tuple(remove_argv(container, name)),)))
    return dataclasses.replace(plan, nodes=tuple(launches),
                               rendezvous=f"{plan.rendezvous}, in {container.image or container.rootfs}")


def setup_argv(fleet: Fleet, job_id: str, node: str, script: str, cwd: str, env_names: Iterable[str],
               gpus: bool) -> list[str]:
    """The setup script inside the container, in the project directory (mounted)."""
    container = fleet.container
    assert container is not None
    return run_argv(container, container_name(job_id, node), ["sh", "-c", script], cwd, env_names, [cwd], gpus)

