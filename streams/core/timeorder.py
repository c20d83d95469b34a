"""Dicts kept in event-time order (entries inserted as events are released, a repeat moved to the end),
so the expired entries lead: a trim reads them and the first live one, never the rest."""
from __future__ import annotations


def drop_expired_front(table: dict, horizon: int, ts_at: int | None = None) -> list | None:
    """Delete the leading entries whose time is below `horizon` (the value itself, or value[ts_at]);
    return their keys, or None when none was."""
    old = None
    for k, v in table.items():
        if (v if ts_at is None else v[ts_at]) >= horizon:
            break
        if old is None:
            old = [k]
        else:
            old.append(k)
    if old is not None:
        for k in old:
            del table[k]
    return old
