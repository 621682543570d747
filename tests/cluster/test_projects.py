"""Code, environment and setup on every node: each project in its own directory, checked
at every launch, and setup run once. Proven on the nodes' private /tmp."""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml

from helpers import node_tmp, tf
from trainfleet.ops.sync import project_for
from trainfleet.sandbox import cluster as sb

PRINT_NAME = "print('I am project {name}')\n"


def project(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "main.py").write_text(PRINT_NAME.format(name=name))
    return folder


def test_two_projects_run_in_turn_keep_their_own_code(fleet2: Path, tmp_path: Path) -> None:
    a, b = project(tmp_path, "alpha"), project(tmp_path / "elsewhere", "alpha")  # same name, other checkout
    assert project_for(a).name != project_for(b).name
    (b / "main.py").write_text(PRINT_NAME.format(name="beta"))
    tf("sync", "-f", str(fleet2), str(a), check=True)
    tf("sync", "-f", str(fleet2), str(b), check=True)
    # From project A, the nodes run A's code.
    ran = tf("exec", "-f", str(fleet2), "--", "python3 main.py", cwd=a)
    assert sorted(ran.stdout.splitlines()) == ["node0: I am project alpha", "node1: I am project alpha"], ran.stderr


def test_gitignored_and_excluded_files_stay_behind_and_nothing_is_deleted_unless_asked(
        fleet2: Path, cluster3: sb.SandboxState, tmp_path: Path) -> None:
    source = project(tmp_path, "proj")
    (source / ".gitignore").write_text("data/\n*.log\n")
    (source / "data").mkdir()
    (source / "data" / "big.bin").write_bytes(b"x" * 1000)
    (source / "run.log").write_text("local log\n")
    (source / "secret.env").write_text("TOKEN=x\n")
    (source / "sub").mkdir()
    (source / "sub" / ".gitignore").write_text("scratch.txt\n")
    (source / "sub" / "scratch.txt").write_text("scratch\n")
    (source / "sub" / "keep.py").write_text("x = 1\n")
    done = tf("sync", "-f", str(fleet2), "--exclude", "secret.env", str(source))
    assert done.returncode == 0, done.stderr
    assert "(4 files)" in done.stderr  # main.py, .gitignore, sub/.gitignore, sub/keep.py
    remote = node_tmp(cluster3, "node1") / "trainfleet" / project_for(source).name
    assert sorted(str(p.relative_to(remote)) for p in remote.rglob("*") if p.is_file() and ".trainfleet" not in p.parts) \
        == [".gitignore", "main.py", "sub/.gitignore", "sub/keep.py"]
    # A checkpoint the job wrote there survives a sync; a file gone here goes only with --delete.
    (remote / "ckpt.pt").write_text("weights")
    (source / "sub" / "keep.py").unlink()
    tf("sync", "-f", str(fleet2), "--exclude", "secret.env", str(source), check=True)
    assert (remote / "ckpt.pt").exists() and (remote / "sub" / "keep.py").exists()
    tf("sync", "-f", str(fleet2), "--exclude", "secret.env", "--delete", str(source), check=True)
    assert not (remote / "sub" / "keep.py").exists() and not (remote / "ckpt.pt").exists()
    assert (remote / ".trainfleet" / "manifest.json").exists()  # the node's own record is kept


def test_code_changed_on_one_node_blocks_the_launch_naming_it(fleet2: Path, cluster3: sb.SandboxState,
                                                              tmp_path: Path) -> None:
    source = project(tmp_path, "edited")
    tf("sync", "-f", str(fleet2), str(source), check=True)
    remote = node_tmp(cluster3, "node1") / "trainfleet" / project_for(source).name
    (remote / "main.py").write_text("print('patched on the node')\n")
    (node_tmp(cluster3, "node0") / "trainfleet" / project_for(source).name / "out.json").write_text("{}")
    started = time.monotonic()
    refused = tf("run", "-f", str(fleet2), "--no-sync", "--sync-dir", str(source), "main.py")
    assert refused.returncode == 1 and time.monotonic() - started < 5
    assert "code on the nodes was changed after the last sync (node1: main.py)" in refused.stderr
    assert "fix: `trainfleet sync`" in refused.stderr and refused.stderr.count("\n") == 1
    # Resynced (files a job wrote, like node0's out.json, never count): the launch goes ahead.
    tf("sync", "-f", str(fleet2), str(source), check=True)
    (source / "main.py").write_text(PRINT_NAME.format(name="newer"))
    tf("sync", "-f", str(fleet2), "-n", "node0", str(source), check=True)
    different = tf("run", "-f", str(fleet2), "--no-sync", "--sync-dir", str(source), "main.py")
    assert different.returncode == 1
    assert "node1 holds different code than node0 (which matches this directory)" in different.stderr
    never = tf("run", "-f", str(fleet2), "--no-sync", "--sync-dir", str(project(tmp_path, "never")), "main.py")
    assert never.returncode == 1 and "has not been synced to node[0-1]" in never.stderr


def test_setup_runs_once_is_skipped_after_and_names_the_node_that_fails(fleet2: Path, cluster3: sb.SandboxState,
                                                                        tmp_path: Path) -> None:
    source = project(tmp_path, "withsetup")
    (source / "requirements.txt").write_text("first\n")
    data = yaml.safe_load(fleet2.read_text())
    data["setup"] = ["echo building for $(hostname) from requirements.txt", "date +%s%N > built.txt"]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(data))
    first = tf("setup", "-f", str(fleet), "--sync-dir", str(source), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "succeeded on node[0-1]" in first.stderr
    built = [(node_tmp(cluster3, n) / "trainfleet" / project_for(source).name / "built.txt").read_text()
             for n in ("node0", "node1")]
    logs = sorted((tmp_path / "trainfleet-runs").glob("setup-*/node1.log"))
    assert "building for" in logs[-1].read_text()
    started = time.monotonic()
    second = tf("setup", "-f", str(fleet), "--sync-dir", str(source), "--no-sync", cwd=tmp_path)
    assert time.monotonic() - started < 2  # the whole command; the check itself is one round trip
    assert second.returncode == 0 and "already done on node[0-1]" in second.stderr
    assert built == [(node_tmp(cluster3, n) / "trainfleet" / project_for(source).name / "built.txt").read_text()
                     for n in ("node0", "node1")]
    # A launch tells when setup is stale: requirements.txt changed.
    (source / "requirements.txt").write_text("second\n")
    (source / "main.py").write_text("import time; time.sleep(0)\n")
    run = tf("run", "-f", str(fleet), "--sync-dir", str(source), "main.py", cwd=tmp_path)
    assert "setup has not run (or has changed) on node[0-1]: `trainfleet setup` runs it" in run.stderr
    # One node fails: it is named with its output; the other finishes.
    data["setup"] = ["echo checking", f"test $(hostname) != {cluster3.name}-node1 || (echo 'no GPU driver' >&2; exit 3)"]
    fleet.write_text(yaml.safe_dump(data))
    failed = tf("setup", "-f", str(fleet), "--sync-dir", str(source), cwd=tmp_path)
    assert failed.returncode == 1
    assert "succeeded on node0" in failed.stderr
    assert f"setup failed on node1 at step 2/2 `{data['setup'][1]}` (exit status 3)" in failed.stderr, failed.stderr
    assert "  | no GPU driver" in failed.stderr


def test_a_sync_that_fails_on_a_node_shows_its_command_exit_and_what_rsync_said(
        fleet2: Path, cluster3: sb.SandboxState, tmp_path: Path) -> None:
    source = project(tmp_path, "blocked")
    (source / "link.py").symlink_to("main.py")  # only rsync carries a symlink
    remote = node_tmp(cluster3, "node1") / "trainfleet" / project_for(source).name
    remote.parent.mkdir(parents=True, exist_ok=True)
    remote.write_text("a file where the project's directory goes\n")
    try:
        failed = tf("sync", "-f", str(fleet2), str(source))
    finally:
        remote.unlink()
    assert failed.returncode != 0
    lines = failed.stderr.splitlines()
    assert lines[0].startswith(f"trainfleet: error: sync of {source} failed: node1: rsync exited with status"), \
        failed.stderr
    assert any(line.startswith("  node1: `rsync ") and "exited with status 11" in line for line in lines), failed.stderr
    assert any(line.startswith("    | rsync: [Receiver] mkdir") for line in lines), failed.stderr
    assert len(lines) == 4, failed.stderr  # the error, the node's command, what rsync said: no traceback


def test_a_small_change_goes_over_the_agent_what_only_rsync_carries_goes_by_rsync(
        fleet2: Path, cluster3: sb.SandboxState, tmp_path: Path) -> None:
    import asyncio
    import os
    import stat

    from trainfleet.fleet import load_fleet
    from trainfleet.ops.sync import INLINE_BYTES, sync_nodes

    source = project(tmp_path, "inline")
    (source / "run.sh").write_text("#!/bin/sh\necho ran from the script\n")
    (source / "run.sh").chmod(0o750)
    (source / "pkg" / "empty").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("")
    fleet = load_fleet(fleet2)
    remote = node_tmp(cluster3, "node1") / "trainfleet" / project_for(source).name

    def synced() -> list[str]:
        results, _ = asyncio.run(sync_nodes(fleet, fleet.nodes, project_for(source)))
        return sorted({r.command.split()[0] for r in results.results})

    # Code goes over each node's agent: contents, mode, time and empty directories as rsync leaves them.
    assert synced() == ["sync"]
    for name in ("main.py", "run.sh", "pkg/__init__.py"):
        here, there = (source / name).stat(), (remote / name).stat()
        assert (remote / name).read_bytes() == (source / name).read_bytes()
        assert (stat.S_IMODE(there.st_mode), there.st_mtime_ns) == (stat.S_IMODE(here.st_mode), here.st_mtime_ns)
    assert (remote / "pkg" / "empty").is_dir()
    ran = tf("exec", "-f", str(fleet2), "--", "./run.sh", cwd=source)
    assert sorted(ran.stdout.splitlines()) == ["node0: ran from the script", "node1: ran from the script"], ran.stderr
    # A file edited on a node is put back; rsync, which looks at size and time, agrees after.
    (remote / "main.py").write_text("print('patched')\n")
    os.utime(remote / "main.py", ns=((source / "main.py").stat().st_mtime_ns,) * 2)
    assert synced() == ["sync"]
    assert (remote / "main.py").read_text() == PRINT_NAME.format(name="inline")
    # More than a small change, a symlink, or --delete: rsync, as before.
    (source / "weights.bin").write_bytes(os.urandom(INLINE_BYTES + 1))
    assert synced() == ["rsync"]
    assert (remote / "weights.bin").read_bytes() == (source / "weights.bin").read_bytes()
    (source / "weights.bin").unlink()
    (source / "link.py").symlink_to("main.py")
    assert synced() == ["rsync"]
    assert os.readlink(remote / "link.py") == "main.py"
    checked = tf("run", "-f", str(fleet2), "--no-sync", "--sync-dir", str(source), "main.py")
    assert checked.returncode == 0, checked.stderr  # the manifest each way is the one the launch checks


def test_pull_brings_back_what_the_nodes_wrote(fleet2: Path, cluster3: sb.SandboxState, tmp_path: Path) -> None:
    """Node 0's checkpoints by default, every node's into folders of their own with --all,
    a job's records with --job; a second pull carries what changed; a path outside the
    project or missing on a node is one line."""
    source = project(tmp_path, "trained")
    tf("sync", "-f", str(fleet2), str(source), check=True)
    name = project_for(source).name
    for node in ("node0", "node1"):
        folder = node_tmp(cluster3, node) / "trainfleet" / name / "ckpt"
        folder.mkdir(parents=True)
        (folder / "step-10.pt").write_bytes(node.encode() * 100_000)
    here = tmp_path / "here"
    done = tf("pull", "-f", str(fleet2), "--sync-dir", str(source), "--to", str(here), "ckpt/", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (here / "ckpt" / "step-10.pt").read_bytes() == b"node0" * 100_000
    assert f"pulled ckpt/ from 1 node(s) into {here / 'ckpt'}" in done.stderr
    # The node goes on writing: the next pull brings the new file and keeps the old one.
    (node_tmp(cluster3, "node0") / "trainfleet" / name / "ckpt" / "step-20.pt").write_text("later")
    tf("pull", "-f", str(fleet2), "--sync-dir", str(source), "--to", str(here), "ckpt", check=True)
    assert sorted(p.name for p in (here / "ckpt").iterdir()) == ["step-10.pt", "step-20.pt"]
    every = tf("pull", "-f", str(fleet2), "--sync-dir", str(source), "--to", str(here), "--all", "ckpt/step-10.pt")
    assert every.returncode == 0, every.stderr
    assert (here / "node1" / "ckpt" / "step-10.pt").read_bytes() == b"node1" * 100_000
    # By default it lands beside the runs' logs, which sync leaves out.
    tf("pull", "-f", str(fleet2), "--sync-dir", str(source), "ckpt/step-20.pt", cwd=tmp_path, check=True)
    assert (tmp_path / "trainfleet-runs" / "pulled" / "ckpt" / "step-20.pt").read_text() == "later"
    missing = tf("pull", "-f", str(fleet2), "--sync-dir", str(source), "--all", "ckpt/step-20.pt", cwd=tmp_path)
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1, missing.stderr
    assert f"/{name}/ckpt/step-20.pt: no such file or directory on node1" in missing.stderr
    outside = tf("pull", "-f", str(fleet2), "../../etc/passwd", cwd=tmp_path)
    assert outside.returncode == 2 and "give a path inside the project's directory" in outside.stderr
    # A job's own records: its directory on node 0.
    ran = tf("run", "-f", str(fleet2), "--sync-dir", str(source), "--launcher", "command", "main.py", timeout=120)
    assert ran.returncode == 0, ran.stderr
    job = re.search(r"job (tf-[0-9a-f-]+)", ran.stderr + ran.stdout).group(1)  # type: ignore[union-attr]
    records = tf("pull", "-f", str(fleet2), "--job", job, "--to", str(here / "job"), ".", cwd=tmp_path)
    assert records.returncode == 0, records.stderr
    logs = [p.name for p in (here / "job" / job).rglob("*") if p.is_file()]
    assert "supervisor.log" in logs, logs
