"""The bootstrap every Python on a node starts with: its compiled-code cache is used only
when this user alone could have written it and it is of these very sources, and a
damaged one is compiled again."""

from __future__ import annotations

import json
import marshal
import os
import subprocess
import sys
from pathlib import Path

from trainfleet.agent import BOOTSTRAP, sources

ENTRY = "import tfagent.protocol; print('loaded', tfagent.protocol.__name__)\n"


def boot(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BOOTSTRAP + ENTRY], input=json.dumps(sources()) + "\n",
                          capture_output=True, text=True, env={**os.environ, "HOME": str(home)}, timeout=60)


def test_compiled_code_is_cached_private_and_never_taken_from_a_file_others_could_write(tmp_path: Path) -> None:
    first = boot(tmp_path)
    assert first.returncode == 0 and first.stdout == "loaded tfagent.protocol\n", first.stderr
    [cached] = (tmp_path / ".cache" / "trainfleet" / "agent").glob("*.code")
    assert cached.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / ".cache" / "trainfleet" / "agent").stat().st_mode & 0o777 == 0o700
    # Someone else could have written it: its code is not run, the sources are compiled again.
    planted = {name: compile("print('PLANTED')", name, "exec") for name in sources()}
    cached.write_bytes(marshal.dumps(planted))
    cached.chmod(0o620)
    again = boot(tmp_path)
    assert again.returncode == 0 and again.stdout == "loaded tfagent.protocol\n", again.stdout + again.stderr
    # Damaged (cut short): compiled again and rewritten whole.
    cached.chmod(0o600)
    cached.write_bytes(marshal.dumps({n: compile(s, n, "exec") for n, s in sources().items()})[:1000])
    damaged = boot(tmp_path)
    assert damaged.returncode == 0 and damaged.stdout == "loaded tfagent.protocol\n", damaged.stderr
    digest, compiled = marshal.loads(cached.read_bytes())
    assert len(compiled) == len(sources())
    # An older agent's compiled code under the new name (its digest inside is not this one's): not run.
    older = {name: compile("print('OLDER')", name, "exec") for name in sources()}
    cached.write_bytes(marshal.dumps(("0" * 64, older)))
    renamed = boot(tmp_path)
    assert renamed.returncode == 0 and renamed.stdout == "loaded tfagent.protocol\n", renamed.stdout + renamed.stderr
    assert marshal.loads(cached.read_bytes())[0] == digest
