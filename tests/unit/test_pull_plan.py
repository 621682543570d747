"""Where `trainfleet pull` reads on the nodes and writes here: pure, golden."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import PLAN_FLEET, check_golden
from trainfleet.errors import UsageError
from trainfleet.fleet.schema import fleet_from_data
from trainfleet.ops.pull import plan_pull

FLEET = fleet_from_data(PLAN_FLEET, "fleet.yaml", check_keys=False)


def test_one_node_lands_as_itself_several_in_folders_of_their_own() -> None:
    to = Path("trainfleet-runs/pulled")
    lines = [*plan_pull(FLEET, FLEET.nodes[:1], "ckpt/", project="proj-1234", job_id="", destination=to).lines(FLEET),
             *plan_pull(FLEET, FLEET.nodes, "out/last.pt", project="proj-1234", job_id="", destination=to).lines(FLEET),
             *plan_pull(FLEET, FLEET.nodes[:1], ".", project="proj-1234", job_id="tf-20261205-1-ab",
                        destination=to).lines(FLEET)]
    check_golden("pull_plan.txt", "\n".join(lines) + "\n")


@pytest.mark.parametrize("path", ["/etc/passwd", "~/x", "../x", "a/../../b", "", "  "])
def test_paths_outside_the_directory_are_refused(path: str) -> None:
    with pytest.raises(UsageError, match="give a path inside the project's directory"):
        plan_pull(FLEET, FLEET.nodes, path, project="p", job_id="", destination=Path("x"))


def test_a_job_id_is_one_name() -> None:
    with pytest.raises(UsageError, match="is not a job id"):
        plan_pull(FLEET, FLEET.nodes, "x", project="p", job_id="../../etc", destination=Path("x"))
