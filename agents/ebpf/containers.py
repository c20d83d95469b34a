"""cgroup id -> container id, for eBPF events (the scap reader gets it from the cgroup path).

A cgroup id is the inode of the cgroup's directory, so a walk of the cgroup
hierarchies maps ids to paths; container runtimes (containerd, CRI-O, Docker)
name a container's cgroup after its 64-hex id (`cri-containerd-<id>.scope`,
`crio-<id>.scope`, `docker/<id>`, `.../<id>`). v1 and v2 hierarchies are
separate inode spaces, hence two maps. Unknown ids are remembered and resolved
by the next `refresh()` (the agent calls it on a timer), so the hot path is one
dict lookup.
"""
from __future__ import annotations

import os
import re

CONTAINER_ID = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")
V2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
V1_ROOT = "/sys/fs/cgroup/memory"


def _walk(root: str, out: dict[int, str], limit: int = 200_000) -> None:
    stack = [(root, None)]
    seen = 0
    while stack and seen < limit:
        path, inherited = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for e in entries:
            if not e.is_dir(follow_symlinks=False):
                continue
            seen += 1
            m = CONTAINER_ID.search(e.name)
            cid = m.group(1) if m else inherited
            if cid:
                try:
                    out[e.inode()] = cid
                except OSError:
                    continue
            stack.append((e.path, cid))


class ContainerIds:
    def __init__(self, v2_root: str | None = None, v1_root: str | None = V1_ROOT) -> None:
        self.v2_root = v2_root or next((r for r in V2_ROOTS if _is_cgroup2(r)), None)
        self.v1_root = v1_root if v1_root and os.path.isdir(v1_root) else None
        # id -> container id, or "" for a cgroup known not to be a container's
        self.v2: dict[int, str] = {}
        self.v1: dict[int, str] = {}
        self.missing: set[tuple[bool, int]] = set()

    def lookup(self, cgroup_id: int | None, v1: bool) -> str | None:
        if not cgroup_id:
            return None
        cid = (self.v1 if v1 else self.v2).get(cgroup_id)
        if cid is None:
            if len(self.missing) < 4096:
                self.missing.add((v1, cgroup_id))
            return None
        return cid or None

    def refresh(self) -> None:
        """Re-walk the hierarchies; ids still unknown are remembered as "not a container"."""
        missing, self.missing = self.missing, set()
        v2: dict[int, str] = {}
        v1: dict[int, str] = {}
        if self.v2_root:
            _walk(self.v2_root, v2)
        if self.v1_root:
            _walk(self.v1_root, v1)
        for is_v1, cg in missing:
            (v1 if is_v1 else v2).setdefault(cg, "")
        self.v2, self.v1 = v2, v1


def _is_cgroup2(path: str) -> bool:
    return os.path.exists(os.path.join(path, "cgroup.controllers"))
