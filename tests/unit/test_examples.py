"""The bundled examples are found from the package, in a checkout as in a wheel."""

from __future__ import annotations

from trainfleet.cli.examples import example_dir


def test_the_demos_example_is_found() -> None:
    assert (example_dir("charlm") / "train.py").is_file()
