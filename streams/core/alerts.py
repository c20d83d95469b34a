"""Stage 3, alerts (keyed by alert key = rule + labels).

Occurrences (one per chain and rule) are deduplicated by chain id and folded
into suppression windows aligned to a fixed grid (keys.window_start), so the
alert id — rule + labels + window start — is the same in every runner. An alert
is emitted when its window opens (count 1, for latency) and re-emitted, final,
when the watermark closes the window if anything changed; the last record per
alert_id is the alert (the topic is keyed by alert_id).

flush() (end of input, or a shell flushing an idle partition) emits every
window's final record but keeps the window until the watermark passes its
end + lateness: an occurrence that still arrives for it counts on (count,
first/last seen) under the same alert_id instead of restarting at 1. A shell
that wants that must keep the state after flush while `is_idle` is False.
"""
from __future__ import annotations

from . import rules as R
from .deadletter import dead_letter
from .keys import alert_id, window_start

S = 10**9
ALERTS_TOPIC = "svctrace.alerts"
OCCURRENCES_TOPIC = "svctrace.alerts.occurrences"
ALERT_SCHEMA = "svctrace.alert"
MAX_CHAIN_IDS = 100
MAX_EVIDENCE = 20
MAX_DEDUP = 10_000


class Alerter:
    name = "alerts"

    def __init__(self, lateness_ns: int = 60 * S):
        # Occurrences reach this stage up to (stitch lateness + idle timeout) after their time.
        self.lateness_ns = lateness_ns

    @staticmethod
    def new_state() -> dict:
        return {"w": {}}

    @staticmethod
    def is_idle(state: dict) -> bool:
        return not state["w"]

    def deadline(self, state: dict) -> int | None:
        ends = [w["end"] + self.lateness_ns for w in state["w"].values()]
        return min(ends) if ends else None

    def process(self, state: dict, key: str, occ: dict) -> list[tuple[str, str, dict]]:
        try:
            return self._process(state, occ)
        except Exception as exc:  # one bad occurrence must not stop the stage
            ts = occ.get("ts") if isinstance(occ, dict) and isinstance(occ.get("ts"), int) else 0
            return [dead_letter(self.name, OCCURRENCES_TOPIC, key, occ, exc, ts)]

    def _process(self, state: dict, occ: dict) -> list[tuple[str, str, dict]]:
        rule = R.RULES[occ["rule"]]
        ws = window_start(occ["ts"], rule.suppress_ns)
        w = state["w"].get(str(ws))
        if w is None:
            w = state["w"][str(ws)] = {"ws": ws, "end": ws + rule.suppress_ns, "rule": rule.id,
                                       "labels": occ["labels"], "chains": {}, "first": occ["ts"], "last": occ["ts"],
                                       "count": 0, "extra": 0, "best": None, "emitted": 0}
        cid = occ["chain_id"]
        if cid in w["chains"]:
            return []  # at-least-once: the same chain's occurrence again
        if len(w["chains"]) < MAX_DEDUP:
            refs = occ["evidence"]  # the first and the last: where the request began and where it failed
            w["chains"][cid] = [occ["ts"], refs if len(refs) <= MAX_EVIDENCE else [refs[0], *refs[1 - MAX_EVIDENCE:]]]
            marks = state.get("_ca")
            if marks is not None:  # (a checkpointing shell's: durable_parts)
                marks.add(f"{ws}:{cid}")
        else:
            w["extra"] += 1
        w["count"] += 1
        w["first"] = min(w["first"], occ["ts"])
        w["last"] = max(w["last"], occ["ts"])
        best = w["best"]
        if best is None or (occ["ts"], cid) < (best["ts"], best["chain_id"]):
            w["best"] = {"ts": occ["ts"], "chain_id": cid, "vars": occ["vars"], "in_cluster": occ.get("in_cluster", False)}
        if w["emitted"] == 0:
            w["emitted"] = w["count"]
            return [(ALERTS_TOPIC, self._id(w), self._record(w))]
        return []

    def advance(self, state: dict, key: str, watermark_ns: int) -> list[tuple[str, str, dict]]:
        out = []
        for k in list(state["w"]):
            w = state["w"][k]
            if watermark_ns >= w["end"] + self.lateness_ns:
                if w["emitted"] != w["count"]:
                    out.append((ALERTS_TOPIC, self._id(w), self._record(w)))
                del state["w"][k]
                marks = state.get("_ca")
                if marks is not None:  # its chains' entries are gone
                    marks.update([f"{k}:{cid}" for cid in w["chains"]])
        return out

    def flush(self, state: dict, key: str) -> list[tuple[str, str, dict]]:
        """Emit every window's record now (if it changed since last emitted). The windows stay
        (is_idle stays False) until advance() passes end + lateness, so late occurrences merge."""
        out = []
        for w in state["w"].values():
            if w["emitted"] != w["count"]:
                w["emitted"] = w["count"]
                out.append((ALERTS_TOPIC, self._id(w), self._record(w)))
        return out

    # -- durable state (what a checkpoint keeps) ---------------------------------------

    @staticmethod
    def durable(state: dict) -> dict:
        """The alerts stage buffers no input: all of its state is durable (but the change marks)."""
        if "_ca" in state:
            return {k: v for k, v in state.items() if k != "_ca"}
        return state

    def restore(self, durable: dict) -> dict:
        return durable

    # A checkpoint in parts (durable_parts / restore_parts), as the stitch stage's: a window's deduplicated
    # chains (up to MAX_DEDUP, each [ts, evidence refs]) are most of a key's state, and each is set once and
    # never changed: written whole, every window was rewritten at every checkpoint that touched its key.
    # The header holds the windows without their chains; each chain is an entry of its own,
    # "<window key>:<chain id>" -> [ts, refs] (a window key is its start, digits: the first ":" ends it),
    # written once, and a tombstone when its window closes. The marks: "_ca", the entries added or gone
    # since the last durable_parts (only once durable_parts has been asked: the in-process runner never
    # keeps them).

    @staticmethod
    def durable_parts(state: dict) -> tuple[dict, dict]:
        """(header, changed): the windows without their chains, and the chain entries added since the last
        call ({subkey: [ts, refs]}, None for one gone); every entry at the first call on a state (or after
        untrack()). Resets the marks; the header's "parts" counts the state's entries."""
        windows = state["w"]
        header = {k: v for k, v in state.items() if k != "w" and k != "_ca"}
        header["w"] = {k: {f: v for f, v in w.items() if f != "chains"} for k, w in windows.items()}
        header["parts"] = sum(len(w["chains"]) for w in windows.values())
        marks = state.get("_ca")
        changed = {}
        if marks is None:
            for k, w in windows.items():
                for cid, entry in w["chains"].items():
                    changed[f"{k}:{cid}"] = entry
        else:
            for sub in marks:
                k, cid = sub.split(":", 1)
                w = windows.get(k)
                changed[sub] = None if w is None else w["chains"].get(cid)
        state["_ca"] = set()
        return header, changed

    @staticmethod
    def tracking(state: dict) -> bool:
        """Whether the state has change marks (else durable_parts gives every entry)."""
        return "_ca" in state

    @staticmethod
    def untrack(state: dict) -> None:
        """Forget the change marks: the next durable_parts gives every entry."""
        state.pop("_ca", None)

    def restore_parts(self, header: dict, entries: dict) -> dict:
        """A header and its entries {subkey: entry} (durable_parts' forms, as JSON gives them back) -> a
        state process/advance take, marked as having given out exactly these."""
        state = {k: v for k, v in header.items() if k != "parts"}
        windows = state["w"] = {k: {**w, "chains": {}} for k, w in header["w"].items()}
        for sub, entry in entries.items():
            k, cid = sub.split(":", 1)
            w = windows.get(k)
            if w is None:
                raise ValueError(f"alerts state entry {sub!r} of no window")
            w["chains"][cid] = entry
        state["_ca"] = set()
        return state

    @staticmethod
    def _id(w: dict) -> str:
        return alert_id(w["rule"], w["labels"], w["ws"])

    def _record(self, w: dict) -> dict:
        rule = R.RULES[w["rule"]]
        ordered = sorted(w["chains"].items(), key=lambda kv: (kv[1][0], kv[0]))
        evidence, seen = [], set()
        for _cid, (_ts, refs) in ordered[:3]:
            for r in refs:
                if (r["node"], r["n"]) not in seen and len(evidence) < MAX_EVIDENCE:
                    seen.add((r["node"], r["n"]))
                    evidence.append(r)
        best = w["best"]
        return {
            "schema": ALERT_SCHEMA, "version": 1, "alert_id": self._id(w), "rule": rule.id,
            "severity": R.severity(rule, best["in_cluster"]),
            "summary": R.summary(rule, best["vars"]),
            "labels": dict(w["labels"]),
            "chain_ids": [cid for cid, _ in ordered[:MAX_CHAIN_IDS]],
            "evidence": evidence,
            "first_seen": w["first"], "last_seen": w["last"], "count": w["count"],
            "suppress_ns": rule.suppress_ns,
        }
