"""The event table: the single source of truth for event codes, names,
directions, parameter names and types (loaded from `event_table.json`, a
dump of libs' `g_event_info[]`).

Everything else in this package is derived from it: the generic parameter
decoder, the enter/exit merge (exit code = enter code + 1, missing exit
params filled from the enter event by name), the set of event types the
normalizer must decode and the writer's parameter layouts.

`EVENTS[code]` is an `EventInfo`; codes are dense from 0 to `len(EVENTS)-1`.
Parameter types are libs' `PT_*` names without the prefix ("FD", "SOCKTUPLE").
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

# Wire width in bytes of the fixed-size parameter types, and whether signed
# (scap-format.md §11). Everything else is variable length.
FIXED: dict[str, tuple[int, bool]] = {
    **dict.fromkeys(("INT8",), (1, True)),
    **dict.fromkeys(("UINT8", "FLAGS8", "ENUMFLAGS8", "SIGTYPE", "L4PROTO", "SOCKFAMILY"), (1, False)),
    **dict.fromkeys(("INT16",), (2, True)),
    **dict.fromkeys(("UINT16", "FLAGS16", "ENUMFLAGS16", "PORT", "SYSCALLID"), (2, False)),
    **dict.fromkeys(("INT32", "FD32", "PID32"), (4, True)),
    **dict.fromkeys(("UINT32", "FLAGS32", "ENUMFLAGS32", "UID", "GID", "MODE", "BOOL", "SIGSET"), (4, False)),
    **dict.fromkeys(("INT64", "ERRNO", "FD", "PID", "RELTIME"), (8, True)),
    **dict.fromkeys(("UINT64", "ABSTIME"), (8, False)),
}
STRING_TYPES = frozenset(("CHARBUF", "FSPATH", "FSRELPATH"))

# sysdig 0.29.3 (libs 2022-03) knows event codes below this value only: it skips newer
# types without counting them in evt.num, and the writer uses only codes below it.
SYSDIG_0_29_TABLE_SIZE = 338


@dataclass(frozen=True, slots=True)
class EventInfo:
    code: int
    enum: str  # PPME_SOCKET_CONNECT_X
    name: str  # evt.type as sysdig prints it ("connect", "accept", "syscall" for GENERIC)
    syscall: str  # concrete syscall ("accept4" for PPME_SOCKET_ACCEPT4_5_X)
    is_enter: bool
    category: frozenset[str]  # EC_* without the prefix: NET, SYSCALL, METAEVENT...
    flags: frozenset[str]
    params: tuple[tuple[str, str], ...]  # (name, type)

    @property
    def direction(self) -> str:
        return ">" if self.is_enter else "<"

    @property
    def is_meta(self) -> bool:
        """Meta events (procinfo, container, k8s, drop, user added...): not syscalls."""
        return "METAEVENT" in self.category

    @property
    def large_payload(self) -> bool:
        return "LARGE_PAYLOAD" in self.flags

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.params)


def _syscall_name(enum: str, name: str) -> str:
    """PPME_SOCKET_ACCEPT4_5_X -> accept4; PPME_SYSCALL_EXECVE_19_E -> execve."""
    m = re.match(r"PPME_(?:SYSCALL_|SOCKET_)?(.*?)(?:_\d+)?_[EX]$", enum)
    if not m or name in ("NA", "syscall"):
        return name
    base = m.group(1).lower()
    # Keep the table name unless the enum names a different syscall (accept4, dup2...).
    return base if base.startswith(name) else name


def _load() -> tuple[EventInfo, ...]:
    doc = json.loads((Path(__file__).with_name("event_table.json")).read_text())
    out = []
    for code, enum, name, category, flags, params in doc["events"]:
        out.append(
            EventInfo(
                code=code,
                enum=enum,
                name=name,
                syscall=_syscall_name(enum, name),
                is_enter=enum.endswith("_E"),
                category=frozenset(category),
                flags=frozenset(flags),
                params=tuple(tuple(p.split(":", 1)) for p in params),
            )
        )
    return tuple(out)


EVENTS: tuple[EventInfo, ...] = _load()
PPM_EVENT_MAX = len(EVENTS)
BY_ENUM: dict[str, EventInfo] = {e.enum: e for e in EVENTS}


def codes_named(*names: str, exits: bool = True) -> frozenset[int]:
    """Codes of every version of the given syscalls (by concrete syscall name)."""
    wanted = set(names)
    return frozenset(e.code for e in EVENTS if e.syscall in wanted and e.is_enter != exits)


def latest(syscall: str, *, exit: bool = True) -> EventInfo:
    """The current (highest-code, non-OLD_VERSION if any) event of a syscall."""
    cands = [e for e in EVENTS if e.syscall == syscall and e.is_enter != exit]
    current = [e for e in cands if "OLD_VERSION" not in e.flags] or cands
    return max(current, key=lambda e: e.code)
