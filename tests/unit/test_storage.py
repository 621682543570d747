"""`storage:` in the fleet file: what each entry needs, and the commands every node runs
(golden: the NFS and CIFS commands are checked here, where the kernel cannot mount them)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from helpers import PLAN_FLEET as FLEET
from helpers import check_golden
from trainfleet.errors import SpecError
from trainfleet.fleet.schema import fleet_from_data
from trainfleet.plans.mounts import plan_mounts, render

STORAGE = [
    {"type": "shared-dir", "mount": "/data/shared", "source": "/srv/shared"},
    {"type": "nfs", "source": "/export/ckpt", "mount": "/mnt/ckpt", "node": "gpu1", "options": ["noatime"]},
    {"type": "nfs", "source": "/volume1/data", "mount": "/mnt/nas", "server": "nas.lan"},
    {"type": "s3", "bucket": "llava-data", "endpoint": "http://10.0.0.99:9000", "mount": "/mnt/s3", "source": "v1/"},
    {"type": "cifs", "source": "//fileserver/datasets", "mount": "/mnt/datasets", "username": "trainer"},
]


def fleet_with(storage: list[dict], secrets: list[str] | None = None):  # type: ignore[no-untyped-def]
    data = copy.deepcopy(FLEET)
    data["storage"] = storage
    data["secrets"] = secrets if secrets is not None else ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                           "CIFS_PASSWORD"]
    return fleet_from_data(data, "fleet.yaml", Path("."))


def test_every_kind_renders_commands_with_secrets_by_name_only() -> None:
    fleet = fleet_with(STORAGE)
    steps = plan_mounts(fleet)
    text = render(steps)
    check_golden("storage_mounts.txt", text)
    # Servers come first: clients mount what is already served.
    assert [s.role for s in steps][:2] == ["server", "server"]
    assert "AWS_SECRET_ACCESS_KEY=<secret AWS_SECRET_ACCESS_KEY> s3fs" in text and "PASSWD=<secret CIFS_PASSWORD>" in text
    nfs_server = next(s for s in steps if s.role == "server" and s.label.startswith("nfs"))
    # The export goes to the other node's training address, and is taken back on umount.
    assert ("exportfs", "-o", "rw,sync,no_subtree_check,root_squash", "10.0.0.10:/export/ckpt") in nfs_server.commands
    assert nfs_server.undo == (("exportfs", "-u", "10.0.0.10:/export/ckpt"),)


@pytest.mark.parametrize("entry, secrets, message", [
    ({"type": "s3", "mount": "/mnt/s3"}, None, "an s3 storage needs `bucket:`"),
    ({"type": "s3", "mount": "/mnt/s3", "bucket": "b"}, [], "needs the secret(s) AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"),
    ({"type": "cifs", "mount": "/mnt/c", "source": "fileserver/x", "username": "u"}, None, "source: //server/share"),
    ({"type": "cifs", "mount": "/mnt/c", "source": "//f/x", "username": "u", "password_secret": "NAS_PW"}, None,
     "needs the secret(s) NAS_PW"),
    ({"type": "nfs", "mount": "/mnt/n"}, None, "the exported path"),
    ({"type": "shared-dir", "mount": "data"}, None, "must be an absolute path"),
    ({"type": "shared-dir", "mount": "/d", "node": "gpu9"}, None, "storage[0].node: no node named 'gpu9'"),
    ({"type": "shared-dir", "mount": "/d", "options": ["a,b"]}, None, "give one `name` or `name=value` per item"),
    ({"type": "shared-dir", "mount": "/d", "bucket": "x"}, None, "are for s3 storage"),
    ({"type": "zfs", "mount": "/d"}, None, "storage[0].type"),
    # Values that would become mount options or commands: refused, never passed on.
    ({"type": "s3", "mount": "/mnt/s3", "bucket": "-o allow_other"}, None, "`bucket:` is a bucket name"),
    ({"type": "cifs", "mount": "/mnt/c", "source": "//f/x", "username": "u,uid=0"}, None, "`username:` is one user"),
    ({"type": "nfs", "mount": "/mnt/n", "source": "/"}, None, "would export a system directory"),
    ({"type": "nfs", "mount": "/mnt/n", "source": "/etc/"}, None, "would export a system directory"),
    ({"type": "nfs", "mount": "/mnt/n", "source": "/export/../etc"}, None, "without spaces, commas, quotes or '..'"),
    ({"type": "shared-dir", "mount": "/d,nosuid"}, None, "without spaces, commas, quotes or '..'"),
    ({"type": "s3", "mount": "/s", "bucket": "b", "endpoint": "http://x,y"}, None, "`endpoint:` is a URL"),
])
def test_a_wrong_entry_is_one_line_naming_it(entry: dict, secrets: list[str] | None, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        fleet_with([entry], secrets)
    assert message in str(caught.value) and "fleet.yaml" in str(caught.value)


def test_two_entries_on_one_path_are_refused() -> None:
    with pytest.raises(SpecError, match=r"storage\[1\].mount: /d/ is also storage\[0\]'s"):
        fleet_with([{"type": "shared-dir", "mount": "/d"}, {"type": "shared-dir", "mount": "/d/"}])
