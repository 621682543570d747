"""A shell command for the controller's `exec`, run by a resident agent as sshd runs one.

sshd gives a session's command a session of its own and the channel as stdin; `exec`'s
watchdog (transport/commands.py) reads that stdin and ends the command's process group
at EOF. Here stdin is a pipe this process holds: when the controller is done, gone, or
timed out, its connection closes, this process (a fork serving that one connection)
exits, the pipe closes, and the watchdog ends the command exactly as over SSH.
"""

import os
import signal
import subprocess
import threading
from typing import Any, Callable, List

from .protocol import CommandExit, CommandOutput, CommandRequest

_HOLD: List[Any] = []
"""The commands' stdin pipes: never written, closed only when this process ends."""


def run(request: CommandRequest, emit: Callable[[Any], None]) -> CommandExit:
    process = subprocess.Popen(request.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=os.path.expanduser("~"), start_new_session=True)
    _HOLD.append(process.stdin)

    def pump(stream: Any, name: str) -> None:
        for raw in stream:
            emit(CommandOutput(stream=name, line=raw.decode("utf-8", "replace")))
        stream.close()

    errors = threading.Thread(target=pump, args=(process.stderr, "stderr"), daemon=True)
    errors.start()
    pump(process.stdout, "stdout")
    errors.join()
    status = process.wait()
    if status < 0:
        return CommandExit(exit_status=None, signal=signal.Signals(-status).name[3:])
    return CommandExit(exit_status=status)
