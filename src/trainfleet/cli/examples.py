"""Where the bundled examples are: in a wheel they ship inside the package, in a
source checkout they are the repository's `examples/` folder."""

from __future__ import annotations

from pathlib import Path

from trainfleet.errors import TrainfleetError


def example_dir(name: str) -> Path:
    package = Path(__file__).resolve().parents[1]  # (this module is trainfleet/cli/examples.py)
    for candidate in (package / "examples" / name, package.parents[1] / "examples" / name):
        if (candidate / "train.py").is_file():
            return candidate
    raise TrainfleetError(f"example {name!r} is not installed with this copy of trainfleet",
                          fix="reinstall trainfleet from its repository")
