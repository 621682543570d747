"""Writing a file so that a reader never sees half of it: the one helper, for the nodes
and for the controller (which imports it from here)."""

from __future__ import annotations

import os
from typing import Optional, Union


def write_atomically(path: Union[str, "os.PathLike[str]"], text: Union[str, bytes], mode: Optional[int] = None,
                     mtime_ns: Optional[int] = None, durable: bool = True) -> None:
    """Beside `path`, then renamed over it: a reader, a crash or a full disk leaves the old
    file or the new one, never half of one. The temporary name is random, not the pid:
    nodes that share a file system (an NFS home) can have the same pids. The file keeps
    its mode and owner (or gets `mode`; `mtime_ns` sets its time), and with `durable` is
    on disk before the rename."""
    try:
        kept = os.stat(path)
    except OSError:
        kept = None
    tmp = "%s.%s.tmp" % (path, os.urandom(6).hex())
    chosen = mode if mode is not None else kept.st_mode & 0o7777 if kept is not None else None
    # A new file with no mode asked for is made as open() makes one (the umask applies).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600 if chosen is not None else 0o666)
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as handle:
            if chosen is not None:
                os.fchmod(handle.fileno(), chosen)
            if kept is not None:
                try:
                    os.fchown(handle.fileno(), kept.st_uid, kept.st_gid)
                except OSError:
                    pass  # not ours to give away: it stays this user's
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
