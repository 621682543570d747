"""A project's directory on a node: what its last sync put there, and its setup stamp.

The manifest lists each synced file with its size and (below a size limit) its sha256,
so that files a job writes into the directory later are not mistaken for code, while a
synced file edited on the node is found.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, List, Optional

from .protocol import Empty, ManifestRequest, ProjectState
from .records import write_atomically

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
