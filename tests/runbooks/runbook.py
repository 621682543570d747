"""A runbook page as a session at the terminal: the test runs the page's commands in a
project directory (its fleet.yaml beside the code), prints each one as `$ trainfleet ...`
with what it showed, and checks at the end that the page lists exactly the commands run."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from helpers import REPO

PAGES = REPO / "docs" / "runbooks"
PROJECT = Path(__file__).resolve().parent / "project"
# The page's session: the ```console block right after this marker.
MARKER = "<!-- runbook-test: the commands below are run, in this order, by tests/runbooks/ -->"


def page_commands(page: Path) -> list[str]:
    text = page.read_text()
    assert MARKER in text, f"{page.name} lost its marked session block"
    block = text.split(MARKER, 1)[1].split("```console", 1)[1].split("```", 1)[0]
    return [line[2:].strip() for line in block.splitlines() if line.startswith("$ ")]


class Session:
    """One user's terminal in a project directory."""

    def __init__(self, page: str, directory: Path, env: dict[str, str] | None = None) -> None:
        self.page = PAGES / f"{page}.md"
        self.project = directory
        shutil.copytree(PROJECT, directory, dirs_exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        self.env.pop("TRAINFLEET_FLEET", None)
        self.ran: list[str] = []

    def fleet(self) -> dict:
        return yaml.safe_load((self.project / "fleet.yaml").read_text())

    def edit_fleet(self, **fields: object) -> None:
        """What the user changes in fleet.yaml with an editor."""
        data = {**self.fleet(), **fields}
        (self.project / "fleet.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    def _say(self, args: tuple[str, ...]) -> None:
        line = "trainfleet " + shlex.join(args)
        self.ran.append(line)
        print(f"$ {line}", flush=True)

    def __call__(self, *args: str, expect: int | None = 0, timeout: float = 300,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        self._say(args)
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "trainfleet", *args], cwd=self.project, capture_output=True,
                              text=True, timeout=timeout, env={**self.env, **(env or {})}, stdin=subprocess.DEVNULL)
        shown = (done.stdout + done.stderr).rstrip().splitlines()
        for line in shown[:40] + (["  ..."] + shown[-20:] if len(shown) > 60 else shown[40:]):
            print(f"  {line}")
        print(f"  (exit {done.returncode}, {time.monotonic() - started:.1f}s)", flush=True)
        if expect is not None:
            assert done.returncode == expect, (f"`{self.ran[-1]}` exited {done.returncode}, not {expect}:\n"
                                               f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return done

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A command left running (the user's second terminal)."""
        self._say(args)
        return subprocess.Popen([sys.executable, "-m", "trainfleet", *args], cwd=self.project, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
                                stdin=subprocess.DEVNULL)

    def check_page(self) -> None:
        """The page shows what was run, no more, no less."""
        assert page_commands(self.page) == self.ran, (
            f"{self.page.name} and the test disagree:\npage:\n  " + "\n  ".join(page_commands(self.page))
            + "\nran:\n  " + "\n  ".join(self.ran))


def losses(output: str) -> list[float]:
    return [float(x) for x in re.findall(r"^\[[^\]]+:0\] step \d+ loss ([0-9.]+)$", output, re.MULTILINE)]


def trained(output: str, steps: int) -> None:
    """Rank 0 printed every step and the loss fell by more than half."""
    found = losses(output)
    assert len(found) == steps, output[-3000:]
    assert found[-1] < found[0] / 2, found

