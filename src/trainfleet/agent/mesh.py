"""The job's node supervisors, watching each other without the controller.

Node 0's supervisor is the coordinator: every other node's supervisor connects to it
(over the training network, with the job's token) and each side sends a heartbeat every
second, with the time its ranks last wrote a line. A node whose connection closes, or
that is silent for `loss_timeout` seconds, is lost: the coordinator then ends the job on
every node at once (naming the node), or, when the job may continue on fewer nodes,
ends only the survivors' ranks so that torchrun's agents restart them and meet again
without it. A node that loses the coordinator ends its own part of the job. When no rank
anywhere has written for `hang_timeout` seconds, every node dumps its ranks' stacks
and the job ends. Messages are JSON lines; stdlib only.

Node 0 lost: where the job may go on with fewer nodes (or a spare), every other node's
supervisor meets again on the successor (node 1, at a port chosen before the job
started), which coordinates from then on, and each starts its launcher again with the
rendezvous there (the plan's `failover` argv).

Launchers that cannot go on without a node (DeepSpeed, Accelerate, command) have their
job planned ahead for each loss it can survive (`mesh.replans`): when a node is lost, and
restarts are left, every node's part starts again with its part of that smaller plan (a
spare's with the lost node's place), node 0's loss included (the mesh moves first).

Spares (torchrun): their launchers start only once every other node's ranks run (so that the
nodes that train are the ones torchrun's first round takes), and wait in its rendezvous.
A spare lost while it waits costs the job nothing; one never needed is told to stand
down when node 0's part has ended.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from .handshake import MESSAGE_LIMIT, Sealed, accept_loop, client_session
from .protocol import JobStatus, Mesh

BEAT = 1.0
FINISH_JOIN_WAIT = 5.0
RESTART_SETTLE = 2.0
"""A failed part's restart waits this long: a node lost just then (its peers' ranks fail
because it went) is planned around, not started again with the others."""


def _send(channel: Sealed, lock: threading.Lock, message: Dict[str, Any]) -> bool:
    with lock:
        return channel.send(message)


def _lines(channel: Sealed, alive: Callable[[], bool]):  # type: ignore[no-untyped-def]
    """Messages from the peer until the connection closes (or fails, or carries a line
    that is not the peer's next: then it is over): None for each quiet second."""
    sock = channel.sock
    sock.settimeout(BEAT)
    pending = b""
    while alive():
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            yield None
            continue
        except OSError:
            return
        if not chunk:
            return
        pending += chunk
        if len(pending) > MESSAGE_LIMIT and b"\n" not in pending:
            return  # no heartbeat is that long
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            message = channel.open(line)
            if message is None:
                return  # forged, replayed or out of order: nothing more from it is believed
            yield message


class Node:
    """What a supervisor offers the mesh (implemented by job_supervisor.Supervisor)."""

    last_output: float
    ended: bool
    ended_by_mesh: bool
    stop: threading.Event
    """Set once this node's part is ending, for whatever reason."""
    stopped_by: str
    """Why a person (or trainfleet's teardown) is stopping the job, once this node heard it."""

    def note_stopped(self, reason: str) -> None: ...

    def stop_job(self, reason: str, lost: Optional[str] = None) -> None: ...

    def restart_ranks(self, lost: str) -> None: ...

    def dump_stacks(self) -> None: ...

    def note_lost(self, node: str) -> None: ...

    def note_restart(self, lost: str, cause: str, nodes: List[str]) -> None: ...

    def has_ranks(self) -> bool: ...

    def release_spare(self) -> None: ...

    def stand_down(self) -> None: ...

    def fail_over(self, head: str, cause: str) -> bool: ...

    part_done: bool
    """This node's launcher has ended for good (its end is being recorded)."""

    def relaunch(self, generation: int, without: str = "") -> None: ...

    def restart_refused(self, generation: int) -> None: ...


class Coordinator:
    def __init__(self, mesh: Mesh, node: Node) -> None:
        self.mesh = mesh
        self.node = node
        self.peers: Dict[str, Sealed] = {}
        self.locks: Dict[str, threading.Lock] = {}
        self.beats: Dict[str, float] = {}
        self.outputs: Dict[str, float] = {}
        self.ended: Dict[str, bool] = {}
        self.lost: List[str] = []
        self.active: set = set()
        """Nodes whose ranks have run (a spare joins it once it takes a place)."""
        self.spares_released = not mesh.spares or bool(mesh.replans)  # (a re-plan chooses its spare)
        self.current = [n for n in mesh.nodes if n not in mesh.spares]
        """The nodes the job runs on now (a re-plan changes them)."""
        self.generation = 0
        """Whole-job restarts so far (each a new generation of every node's launcher)."""
        self.settled = threading.Event()
        """Set when a part ends or is lost: `finish` wakes at once rather than at its next poll."""
        self.started = time.time()
        self.guard = threading.Lock()
        # On the training address only: nothing of the job listens on the node's other networks.
        family = socket.AF_INET6 if ":" in mesh.coordinator else socket.AF_INET
        self.server = socket.socket(family, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind((mesh.coordinator, mesh.port))
        self.server.listen(128)

    def start(self) -> None:
        fleet = set(self.mesh.addresses)
        allowed = (lambda address: address in fleet) if fleet else None
        threading.Thread(target=accept_loop, args=(self.server, self.mesh.token, self._serve,
                                                   lambda: not self.node.ended),
                         kwargs={"allowed": allowed}, daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _serve(self, sock: socket.socket, hello: Dict[str, Any]) -> None:
        """A peer that proved the job's token: one of the job's nodes, or it is closed."""
        conn = Sealed(sock, hello["_session"], server=True)
        messages = _lines(conn, lambda: not self.node.ended)
        name = hello.get("hello")
        if name not in self.mesh.nodes or name == self.mesh.node:
            conn.close()
            return
        with self.guard:
            if name in self.lost:  # a lost node that comes back does not rejoin this job
                _send(conn, threading.Lock(), {"stop": "this node was lost and left behind"})
                conn.close()
                return
            self.peers[name] = conn
            self.locks[name] = threading.Lock()
            self.beats[name] = time.time()
            late_spare = name in self.mesh.spares and self.spares_released and not self.mesh.replans
        if late_spare:
            _send(conn, self.locks[name], {"spare_go": True})
        for message in messages:
            if message is None:
                continue
            with self.guard:
                self.beats[name] = time.time()
                self.outputs[name] = float(message.get("last_output", 0.0))
                if message.get("ranks"):
                    self.active.add(name)
                if message.get("stopping"):
                    stopping = str(message["stopping"])
                if message.get("ended"):
                    self.ended[name] = True
                    self.settled.set()
                    # A part that was stopped was stopped by what stops the others too (a user, the mesh).
                    failed = message.get("state") == JobStatus.FAILED
            if message.get("stopping"):
                self.announce_stop(stopping)
                continue
            if message.get("restart_job"):
                threading.Thread(target=self.request_restart, args=(name, str(message.get("reason", "")),
                                                                   int(message.get("generation", -1))),
                                 daemon=True).start()
                continue
            if message.get("ended") and failed and not self.mesh.min_nodes and not self.node.stop.is_set():
                # Without the others' ranks noticing, a part that failed alone would leave them waiting.
                self.broadcast({"stop": "%s's part of the job %s" % (name, message["state"])})
                self.node.stop_job("%s's part of the job %s" % (name, message["state"]))
        with self.guard:
            closed = not self.ended.get(name) and name not in self.lost
        if closed:
            self._lose(name, "its connection closed")

    def request_restart(self, name: str, reason: str, generation: int) -> None:
        """A node's part failed: the whole job starts again on every node, while restarts
        are left and no part has ended; else that node is told no (its failure then ends
        the job as any failure does). Several nodes asking for the same failure (the others'
        ranks lose their peers too) make one restart."""
        time.sleep(RESTART_SETTLE)
        with self.guard:
            if generation != self.generation or self.node.stop.is_set():
                return
            can = self.generation < self.mesh.restarts and not any(self.ended.values()) and \
                not self.node.part_done
            if can:
                self.generation += 1
            nodes = list(self.current)
            number = self.generation
        if not can:
            if name == self.mesh.node:
                self.node.restart_refused(generation)
            else:
                with self.guard:
                    sock = self.peers.get(name)
                if sock is not None:
                    _send(sock, self.locks[name], {"restart_refused": generation})
            return
        self.node.note_restart(name, "%s (restart %d of %d)" % (reason, number, self.mesh.restarts), nodes)
        self.broadcast({"relaunch": number})
        self.node.relaunch(number)

    def announce_stop(self, reason: str) -> None:
        """A person stops the job (the stop reached this node, or a member that told us):
        every node hears it before its ranks see their peers go, so that every part is
        recorded as stopped, not as failed."""
        self.broadcast({"stopping": reason})
        self.node.note_stopped(reason)

    def broadcast(self, message: Dict[str, Any]) -> None:
        with self.guard:
            peers = [(n, s) for n, s in self.peers.items() if n not in self.lost]
        for name, sock in peers:
            _send(sock, self.locks[name], message)

    def _lose(self, name: str, why: str) -> None:
        with self.guard:
            # While the job ends, every connection closes: that is no loss.
            if name in self.lost or self.node.ended or self.node.stop.is_set():
                return
            self.lost.append(name)
            self.settled.set()
            # A spare that stood down (or whose launcher ended) is no longer there to join.
            left = [n for n in self.mesh.nodes if n not in self.lost and
                    not (n in self.mesh.spares and self.ended.get(n) and n not in self.active)]
            idle_spare = name in self.mesh.spares and (name not in self.current if self.mesh.replans else
                                                        name not in self.active)
        reason = "%s was lost (%s)" % (name, why)
        self.node.note_lost(name)
        self.broadcast({"lost": name})
        if idle_spare:
            return  # it held no rank: the job goes on as it was
        if self.mesh.replans:
            if not self.replan(name, reason):
                self.broadcast({"stop": reason, "lost_node": name})
                self.node.stop_job(reason, lost=name)
            return
        if self.mesh.min_nodes and len(left) >= self.mesh.min_nodes:
            self.node.note_restart(name, reason, left)
            self.broadcast({"restart": name})
            self.node.restart_ranks(name)
        else:
            self.broadcast({"stop": reason, "lost_node": name})
            self.node.stop_job(reason, lost=name)

    def replan(self, name: str, reason: str) -> bool:
        """Every node's part starts again on the plan made for the nodes lost so far; False
        where there is none, or no restart is left (the job then ends)."""
        with self.guard:
            key = ",".join(sorted(self.lost))
            nodes = self.mesh.replans.get(key)
            if nodes is None or self.generation >= self.mesh.restarts or self.node.part_done:
                return False
            self.generation += 1
            number, self.current = self.generation, list(nodes)
        self.node.note_restart(name, "%s (restart %d of %d)" % (reason, number, self.mesh.restarts), nodes)
        self.broadcast({"relaunch": number, "without": key})
        self.node.relaunch(number, key)
        return True

    def _watch(self) -> None:
        hung = False
        checked = 0.0
        while not self.node.ended:
            time.sleep(0.25)
            now = time.time()
            if not self.spares_released and now - checked >= BEAT:
                checked = now
                self._release_spares()
            with self.guard:
                beats = dict(self.beats)
                connected = set(self.peers)
                outputs = list(self.outputs.values()) + [self.node.last_output]
            for name, sock in list(self.peers.items()):
                _send(sock, self.locks[name], {"beat": now})
            for name in self.mesh.nodes:
                if name == self.mesh.node or name in self.lost or self.ended.get(name):
                    continue
                if name not in connected:
                    if now - self.started > self.mesh.join_timeout:
                        self._lose(name, "its supervisor never joined")
                elif now - beats.get(name, now) > self.mesh.loss_timeout:
                    self._lose(name, "no heartbeat for %.0fs" % self.mesh.loss_timeout)
            if self.mesh.hang_timeout and not hung and now - max(outputs) > self.mesh.hang_timeout:
                hung = True
                # Apart from this loop, whose heartbeats must go on while the stacks are taken.
                threading.Thread(target=self._end_hung, daemon=True).start()

    def _release_spares(self) -> None:
        """Once every node that trains runs ranks (torchrun's first round is complete
        without the spares), the spares' launchers start."""
        with self.guard:
            training = [n for n in self.mesh.nodes[1:] if n not in self.mesh.spares and n not in self.lost]
            waiting = [n for n in training if n not in self.active]
        if waiting or not self.node.has_ranks():
            return
        with self.guard:
            self.spares_released = True
            spares = [(n, s) for n, s in self.peers.items() if n in self.mesh.spares]
        for name, sock in spares:
            _send(sock, self.locks[name], {"spare_go": True})

    def _end_hung(self) -> None:
        self.broadcast({"dump": True})
        self.node.dump_stacks()
        time.sleep(3)  # the dumps reach each node's log
        reason = "hung: no rank wrote anything for %.0fs" % self.mesh.hang_timeout
        self.broadcast({"stop": reason})
        self.node.stop_job(reason)

    def finish(self, state: str) -> None:
        """Node 0's own part ended: if it failed, the others cannot go on; if it succeeded,
        the coordinator stays until every other part has ended (or is lost), so that the
        others are still watched and the fleet's lock is held while any part runs."""
        if state == JobStatus.FAILED and not self.node.ended_by_mesh and not self.node.stopped_by:
            self.broadcast({"stop": "%s's part of the job %s" % (self.mesh.node, state)})
        if state != JobStatus.SUCCEEDED:
            return
        with self.guard:
            idle = [(n, s) for n, s in self.peers.items() if n in self.mesh.spares and n not in self.active]
        for name, sock in idle:
            _send(sock, self.locks[name], {"stand_down": True})
        while not self.node.stop.is_set():
            with self.guard:
                left = [n for n in self.mesh.nodes
                        if n != self.mesh.node and not self.ended.get(n) and n not in self.lost]
            if not left:
                return
            self.settled.wait(0.2)
            self.settled.clear()

    def close(self) -> None:
        try:
            self.server.close()
        except OSError:
            pass


class Member:
    """A node other than node 0, in touch with the coordinator."""

    def __init__(self, mesh: Mesh, node: Node) -> None:
        self.mesh = mesh
        self.node = node
        self.sock: Optional[Sealed] = None
        self.lock = threading.Lock()
        self.joined = threading.Event()
        """Set once this node has said hello to the coordinator, or given up trying."""
        self.heard = 0.0
        """When the coordinator was last heard from."""

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def _connect(self) -> "tuple[Optional[Sealed], str]":
        """Connected and past the handshake, tried again until the join timeout (the
        coordinator's handshake slots may be held by others for a while); else why not."""
        deadline = time.time() + self.mesh.join_timeout
        why = "could not be reached"
        while time.time() < deadline and not self.node.ended:
            try:
                sock = socket.create_connection((self.mesh.coordinator, self.mesh.port), timeout=2)
            except OSError:
                time.sleep(0.5)
                continue
            key = client_session(sock, self.mesh.token, {"hello": self.mesh.node})
            if key is not None:
                return Sealed(sock, key, server=False), ""
            sock.close()
            why = "did not prove the job's token"
            time.sleep(0.5)
        return None, why

    def _run(self) -> None:
        sock, why = self._connect()
        if sock is None:
            self.joined.set()
            if not self.node.ended:
                self.node.stop_job("%s (the coordinator) %s" % (self.mesh.nodes[0], why), lost=self.mesh.nodes[0])
            return
        self.sock = sock
        self.joined.set()
        threading.Thread(target=self._beat, daemon=True).start()
        self.heard = time.time()
        released = False
        for message in _lines(sock, lambda: not self.node.ended):
            now = time.time()
            if message is None:
                if now - self.heard > self.mesh.loss_timeout and not released:
                    break
                continue
            self.heard = now
            if "lost" in message:
                self.node.note_lost(message["lost"])
            if "stopping" in message:
                released = True
                self.node.note_stopped(str(message["stopping"]))
            elif "stop" in message:
                released = True  # the coordinator ends the job: its going away next is no loss
                self.node.stop_job(message["stop"], lost=message.get("lost_node"))
            elif "restart" in message:
                self.node.restart_ranks(message["restart"])
            elif "relaunch" in message:
                threading.Thread(target=self.node.relaunch, args=(int(message["relaunch"]), str(message.get(
                    "without", ""))), daemon=True).start()
            elif "restart_refused" in message:
                self.node.restart_refused(int(message["restart_refused"]))
            elif "spare_go" in message:
                self.node.release_spare()
            elif "stand_down" in message:
                self.node.stand_down()
            elif "dump" in message:
                threading.Thread(target=self.node.dump_stacks, daemon=True).start()
        if not self.node.ended and not released and not self.node.stop.is_set():
            head = self.mesh.nodes[0]
            why = "its connection closed" if now - self.heard <= self.mesh.loss_timeout else (
                "no heartbeat for %.0fs" % self.mesh.loss_timeout)
            if self.node.fail_over(head, "%s was lost (%s)" % (head, why)):
                return  # the mesh meets again on the successor
            self.node.stop_job("%s (the coordinator) was lost" % head, lost=head)

    def request_restart(self, name: str, reason: str, generation: int) -> None:
        """This node's part failed: ask the coordinator for a whole-job restart."""
        if self.sock is None or not _send(self.sock, self.lock, {"restart_job": True, "reason": reason,
                                                                 "generation": generation}):
            self.node.restart_refused(generation)

    def announce_stop(self, reason: str) -> None:
        """A person's stop reached this node: the coordinator tells every other node."""
        if self.sock is not None:
            _send(self.sock, self.lock, {"stopping": reason})

    def _beat(self) -> None:
        while not self.node.ended and self.sock is not None:
            beat: Dict[str, Any] = {"last_output": self.node.last_output}
            if self.mesh.spares:  # (what the coordinator needs to place spares: a look through /proc a second)
                beat["ranks"] = self.node.has_ranks()
            if not _send(self.sock, self.lock, beat):
                return
            time.sleep(BEAT)

    def finish(self, state: str) -> None:
        """Tell the coordinator this node's part has ended (so it is not taken for lost).
        A part that ends before it has joined (a command of a moment) joins first: else
        the coordinator waits for it until the join timeout."""
        self.joined.wait(FINISH_JOIN_WAIT)
        if self.sock is not None:
            _send(self.sock, self.lock, {"ended": True, "state": state, "last_output": self.node.last_output})
