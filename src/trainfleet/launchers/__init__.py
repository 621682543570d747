"""Launchers, by name: each renders per-node commands from a job, the fleet and facts."""

from __future__ import annotations

from trainfleet.errors import UsageError
from trainfleet.launchers.base import DEFAULT_RDZV_PORT, Launcher, LaunchFacts, LaunchPlan, NodeLaunch, RankExit


def launcher_names() -> tuple[str, ...]:
    return ("torchrun",)


def get_launcher(name: str) -> Launcher:
    """The launcher called `name` (imported only when asked for)."""
    if name == "torchrun":
        from trainfleet.launchers.torchrun import Torchrun

        return Torchrun()
    raise UsageError(f"unknown launcher {name!r}", fix=f"use one of: {', '.join(launcher_names())}")


__all__ = ["DEFAULT_RDZV_PORT", "LaunchFacts", "LaunchPlan", "Launcher", "NodeLaunch", "RankExit", "get_launcher",
           "launcher_names"]
