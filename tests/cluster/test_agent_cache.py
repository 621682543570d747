"""The node agent kept on each node by its sha256: sent once, never run when altered."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

from helpers import tf
from trainfleet.agent import sources
from trainfleet.agent.protocol import LockRequest
from trainfleet.fleet.load import load_fleet
from trainfleet.transport.agent_client import AgentClient
from trainfleet.transport.session import FleetSession
from trainfleet.sandbox import cluster as sb

DIGEST = hashlib.sha256(json.dumps(sources()).encode()).hexdigest()


def sent_bytes(state: sb.SandboxState) -> int:
    """What the controller has sent to the sandbox's nodes so far (its end of the link)."""
    return int(Path(f"/sys/class/net/{state.host_interface}/statistics/tx_bytes").read_text())


def test_the_agent_is_sent_once_and_an_altered_copy_is_replaced(cluster3: sb.SandboxState, tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load(Path(cluster3.fleet_file).read_text())
    data.setdefault("ssh", {})["keep_agent"] = 0  # each command's agent comes through a login shell, as here
    fleet3 = tmp_path / "fleet.yaml"
    fleet3.write_text(yaml.safe_dump(data, sort_keys=False))
    cached = Path(cluster3.nodes[0].home) / ".cache" / "trainfleet" / "agent" / f"{DIGEST}.json"
    cached.unlink(missing_ok=True)  # the nodes share this machine's home: one cache for all three
    before = sent_bytes(cluster3)
    tf("doctor", "-f", str(fleet3), check=True)
    first = (sent_bytes(cluster3) - before) / len(cluster3.nodes)
    assert cached.read_text() == json.dumps(sources()) and cached.stat().st_mode & 0o777 == 0o600
    before = sent_bytes(cluster3)
    tf("doctor", "-f", str(fleet3), check=True)
    again = (sent_bytes(cluster3) - before) / len(cluster3.nodes)
    assert again < 12_000 and first - again > 30_000, (first, again)  # the ~160 KB of sources, compressed
    # An altered copy (a stale file, a tampering user) fails its hash: sent afresh, never run.
    cached.write_text(cached.read_text().replace("def serve()", "def serve_altered()"))
    tf("doctor", "-f", str(fleet3), check=True)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == DIGEST


def test_the_agent_ends_at_once_when_the_controller_is_done(fleet3: Path) -> None:
    """A handler thread that has just sent its reply may still hold stdout when stdin ends;
    the interpreter's own shutdown then waited for it, aborted, and every command paid 2 s
    now and then (about one agent in 30)."""
    fleet = load_fleet(fleet3)

    async def rounds() -> list[tuple[float, int | None, str]]:
        async with await FleetSession.open(fleet, fleet.nodes[:1]) as session:
            conn = session.connections[fleet.nodes[0].name]
            ended = []
            for _ in range(120):
                agent = await AgentClient.start(conn, fleet.nodes[0].name, fleet.python)
                for release in (False, True):  # what `run` asks last before it gives up
                    await agent.call(LockRequest(job_id="j1", workdir=fleet.workdir, release=release), timeout=30)
                started = time.monotonic()
                await agent.close()
                completed = await agent.process.wait()
                ended.append((time.monotonic() - started, completed.exit_status, "".join(agent._stderr)))
            return ended

    ended = asyncio.run(rounds())
    assert [e for e in ended if e[0] > 0.5 or e[1] != 0 or e[2]] == []
