"""A sandbox name becomes a directory that `down` removes as root: only a plain word is
accepted, and `down` removes only a child of the sandbox root that holds a sandbox's state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainfleet.errors import SandboxError, UsageError
from trainfleet.sandbox import cluster as sb


@pytest.mark.parametrize("name", ["/", "..", "../x", "", "a/b", "tf\n", "a\nb", ".", "A", "1a", "abcdefghijk"])
def test_the_name_check_refuses_what_is_not_a_plain_word(name: str) -> None:
    with pytest.raises(UsageError) as refused:
        sb.check_name(name)
    assert "\n" not in refused.value.one_line() and "not usable" in refused.value.one_line()


@pytest.mark.parametrize("name", ["tf", "t1", "abcdefghij"])
def test_the_name_check_takes_plain_words(name: str) -> None:
    assert sb.check_name(name) == name


def _down(root: Path, name: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TRAINFLEET_SANDBOX_ROOT=str(root))
    return subprocess.run([sys.executable, "-m", "trainfleet", "sandbox", "down", "--name", name],
                          env=env, capture_output=True, text=True, timeout=60)


def _victim(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    root.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    return root, victim


@pytest.mark.parametrize("name", ["../victim", "..", "a/../../victim", "victim\n"])
def test_down_refuses_a_name_that_leaves_the_root_in_one_line(tmp_path: Path, name: str) -> None:
    root, victim = _victim(tmp_path)
    result = _down(root, name)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not usable" in lines[0] and "Traceback" not in result.stderr, result.stderr
    assert (victim / "precious.txt").read_text() == "keep me"
    assert root.is_dir() and list(root.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="down needs root before it looks at a directory")
def test_down_leaves_a_directory_under_the_root_that_no_sandbox_made(tmp_path: Path) -> None:
    root, _ = _victim(tmp_path)
    mine = root / "mydata"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep me")
    result = _down(root, "mydata")
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "state.json" in result.stderr, result.stderr
    assert (mine / "precious.txt").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() != 0, reason="down needs root before it looks at a directory")
def test_down_does_not_follow_a_link_out_of_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, victim = _victim(tmp_path)
    (victim / "state.json").write_text("{}")
    (root / "link").symlink_to(victim)
    monkeypatch.setenv("TRAINFLEET_SANDBOX_ROOT", str(root))
    with pytest.raises(SandboxError, match="not a directory directly under"):
        sb.down("link")
    assert (victim / "precious.txt").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() != 0, reason="down needs root before it looks at a directory")
def test_down_knows_a_sandbox_that_lost_its_state_file_by_its_key(tmp_path: Path) -> None:
    root, _ = _victim(tmp_path)
    for name, comment, removed in (("crashed", "trainfleet-sandbox-crashed", True),
                                   ("other", "trainfleet-sandbox-crashed", False)):
        (root / name).mkdir()
        (root / name / "id_ed25519.pub").write_text(f"ssh-ed25519 AAAA {comment}\n")
        result = _down(root, name)
        assert (result.returncode == 0) is removed and (root / name).exists() is not removed, result.stderr
