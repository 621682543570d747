"""Launchers, by name: each renders per-node commands from a job, the fleet and facts."""

from __future__ import annotations

from trainfleet.errors import UsageError
from trainfleet.launchers.base import (DEFAULT_RDZV_PORT, Launcher, LaunchFacts, LaunchPlan, NodeLaunch, NodePrepare,
                                       RankExit)


_LAUNCHERS = {
    "torchrun": ("trainfleet.launchers.torchrun", "Torchrun"),
    "deepspeed": ("trainfleet.launchers.deepspeed", "DeepSpeed"),
    "accelerate": ("trainfleet.launchers.accelerate", "Accelerate"),
    "command": ("trainfleet.launchers.command", "Command"),
    "head": ("trainfleet.launchers.head", "Head"),
}


def launcher_names() -> tuple[str, ...]:
    return tuple(_LAUNCHERS)


def get_launcher(name: str) -> Launcher:
    """The launcher called `name` (its module imported only when asked for)."""
    if name not in _LAUNCHERS:
        raise UsageError(f"unknown launcher {name!r}", fix=f"use one of: {', '.join(launcher_names())}")
    import importlib

    module, attribute = _LAUNCHERS[name]
    return getattr(importlib.import_module(module), attribute)()  # type: ignore[no-any-return]


__all__ = ["DEFAULT_RDZV_PORT", "LaunchFacts", "LaunchPlan", "Launcher", "NodeLaunch", "NodePrepare", "RankExit",
           "get_launcher", "launcher_names"]
