"""A project's directory on a node: what its last sync put there, and its setup stamp.

The manifest lists each synced file with its size and (below a size limit) its sha256,
so that files a job writes into the directory later are not mistaken for code, while a
synced file edited on the node is found.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import zlib
from typing import Dict, List, Optional

from .protocol import Empty, ManifestRequest, ProjectState, SyncFilesReply, SyncFilesRequest
from .files import write_atomically

MANIFEST = os.path.join(".trainfleet", "manifest.json")
SETUP_STAMP = os.path.join(".trainfleet", "setup.json")


def directory(workdir: str, project: str) -> str:
    return os.path.join(os.path.expanduser(workdir), project)


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: str) -> Optional[Dict]:  # type: ignore[type-arg]
    try:
        with open(path) as handle:
            return json.load(handle)  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def write_manifest(request: ManifestRequest) -> Empty:
    root = directory(request.workdir, request.project)
    os.makedirs(os.path.join(root, ".trainfleet"), exist_ok=True)
    path = os.path.join(root, MANIFEST)
    write_atomically(path, json.dumps({"digest": request.digest, "files": request.files}))
    return Empty()


def _inside(root: str, name: str) -> str:
    """`name` under `root`; a name that would lead out of it is refused."""
    path = os.path.normpath(os.path.join(root, name))
    if os.path.isabs(name) or not path.startswith(root.rstrip(os.sep) + os.sep):
        raise ValueError("refusing a path outside the project directory: %r" % name)
    return path


def sync_files(request: SyncFilesRequest) -> SyncFilesReply:
    root = directory(request.workdir, request.project)
    for name in request.dirs:
        os.makedirs(_inside(root, name), exist_ok=True)
    for name, blob in request.contents.items():
        wanted, path = request.files[name], _inside(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # As rsync leaves it (mode and time), and as rsync does, not synced to disk file by file.
        write_atomically(path, zlib.decompress(base64.b64decode(blob)), mode=wanted.mode, mtime_ns=wanted.mtime_ns,
                         durable=False)
    needs = []
    for name, wanted in sorted(request.files.items()):
        path = _inside(root, name)
        try:
            seen = os.stat(path, follow_symlinks=False)
            if (not stat.S_ISREG(seen.st_mode) or seen.st_size != wanted.size
                    or file_digest(path) != wanted.digest):
                needs.append(name)
                continue
            if stat.S_IMODE(seen.st_mode) != wanted.mode:
                os.chmod(path, wanted.mode)
            if seen.st_mtime_ns != wanted.mtime_ns:  # as rsync leaves it: its next quick check agrees
                os.utime(path, ns=(wanted.mtime_ns, wanted.mtime_ns))
        except OSError:
            needs.append(name)
    if not needs:
        write_manifest(ManifestRequest(workdir=request.workdir, project=request.project, digest=request.digest,
                                       files=dict((n, [f.size, f.digest]) for n, f in request.files.items())))
    return SyncFilesReply(needs=needs)


def changed_files(root: str, files: Dict[str, List]) -> List[str]:  # type: ignore[type-arg]
    changed = []
    for name, (size, digest) in sorted(files.items()):
        path = os.path.join(root, name)
        try:
            if os.path.getsize(path) != size or (digest is not None and file_digest(path) != digest):
                changed.append(name)
        except OSError:
            changed.append(name)
    return changed


def state(workdir: str, project: str) -> ProjectState:
    root = directory(workdir, project)
    if not os.path.isdir(root):
        return ProjectState(exists=False)
    manifest = _read_json(os.path.join(root, MANIFEST)) or {}
    stamp = _read_json(os.path.join(root, SETUP_STAMP)) or {}
    return ProjectState(exists=True, manifest=manifest.get("digest"),
                        changed=changed_files(root, manifest.get("files", {})), setup=stamp.get("digest"))
