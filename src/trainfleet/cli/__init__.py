"""The command line: parses, calls `trainfleet.ops`, renders. A user's mistake ends
here as one line and a non-zero exit code; a bug as one line unless TRAINFLEET_DEBUG."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import click

from trainfleet.cli.app import cli, echo_err
from trainfleet.errors import TrainfleetError
from trainfleet.results import FleetError


def main() -> NoReturn:
    try:
        cli.main(standalone_mode=False)
    except TrainfleetError as exc:
        echo_err(f"trainfleet: error: {exc.one_line()}")
        if isinstance(exc, FleetError):  # what each failed node ran, how it ended, what it said last
            for line in exc.evidence():
                echo_err(f"  {line}")
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        echo_err("trainfleet: aborted")
        sys.exit(130)
    except click.ClickException as exc:
        echo_err(f"trainfleet: error: {exc.format_message()}")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        echo_err("trainfleet: interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug, not a user mistake: one line unless asked for more
        if os.environ.get("TRAINFLEET_DEBUG"):
            raise
        echo_err(f"trainfleet: internal error: {type(exc).__name__}: {exc} "
                 f"(TRAINFLEET_DEBUG=1 shows the traceback; please report it)")
        sys.exit(70)
    sys.exit(0)


__all__ = ["cli", "main"]
