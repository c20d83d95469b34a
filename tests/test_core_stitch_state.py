"""Stitch states written by an earlier version still load (Stitcher.restore upgrades them)
and resume to the same chains as an uninterrupted run.

tests/core_states/stitch_dict_form.json holds the stitch stage's states of the scenario below,
cut in the middle of a run, as the code at git 8810524 wrote them (every record a dict) with dumps_state;
stitch_list_form.json the same cuts as the code at d66efa0 wrote them (a conn's records as lists),
stitch_format3.json as the code at 5c3b3bb wrote them (checkpoint format 3: lookups, queries and
DNS server records as dicts, timer queues of [deadline, key] lists)
(`python -m tests.test_core_stitch_state <file>` writes them with the code at hand)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import orjson

from svctrace.streams.core import Runner, dumps_state, loads_state
from svctrace.streams.core.enrich import FLOWS_TOPIC
from svctrace.streams.core.stitch import CHAINS_TOPIC, STATE_FORM, Stitcher
from tests.scenario import MODES, MS, S, T0, Cluster, Scenario, renumber

DICT_FORM = Path(__file__).parent / "core_states" / "stitch_dict_form.json"
LIST_FORM = Path(__file__).parent / "core_states" / "stitch_list_form.json"
FORMAT3 = Path(__file__).parent / "core_states" / "stitch_format3.json"


def _traffic():
    """Every translation mode, healthy and refused requests, DNS lookups, and keep-alive
    connections (requests still unanswered at the cut)."""
    cluster = Cluster("wrong_port")
    events = []
    for m, mode in enumerate(MODES):
        sc = Scenario(cluster, mode)
        for i in range(30):
            sc.request(T0 + m * 20 * S + i * 100 * MS, "wrong_port" if i % 3 == 1 else "healthy")
        events += sc.events()
    sc = Scenario(cluster, "dnat")
    for i in range(30):
        sc.keepalive(T0 + 70 * S + i * 100 * MS, statuses=(200, 503, 200))
    events += sc.events()
    return cluster, renumber(sorted(events, key=lambda e: e.ts))  # one numbering per node, as a capture


def _stitch_calls(cluster, events) -> list[tuple]:
    """The stitch stage's inputs in a run: ("p", key, batch) and ("a", key, watermark). The written states' cuts
    count these calls as the code that wrote them made them: there a connection only its acceptors saw (no client,
    no proxy dial) left at its idle timeout, and its bucket was advanced until then; now it leaves settle after they
    close (_accepting_side_only), so a bucket holding only such ones is kept here as long as it was then (the
    runner drops an idle bucket, and advances only those it holds)."""
    calls: list[tuple] = []
    runner = Runner(cluster.index(), step_events=16)
    stage = runner.graph.consumers[FLOWS_TOPIC]
    process, advance, is_idle, idle_ns = stage.process, stage.advance, stage.is_idle, stage.idle_ns
    held: dict[str, int] = {}  # bucket -> when the last such connection it let go would have left (idle timeout)
    last = [None, None]  # the state and key of the last advance (the runner asks is_idle of it next)

    def recorded_process(state, key, batch):
        calls.append(("p", key, batch))
        return process(state, key, batch)

    def recorded_advance(state, key, watermark_ns, final=False):
        if not final:
            calls.append(("a", key, watermark_ns))
        accepting_only = [c for c in state["conns"].values() if _accepting_side_only(c)]
        out = advance(state, key, watermark_ns, final)
        for c in accepting_only:
            if state["conns"].get(c.k) is not c and state["wm"] < c.t1 + idle_ns:
                held[key] = max(held.get(key, 0), c.t1 + idle_ns)
        last[:] = state, key
        return out

    def held_is_idle(state):
        return is_idle(state) and not (state is last[0] and state["wm"] < held.get(last[1], 0))

    stage.process, stage.advance, stage.is_idle = recorded_process, recorded_advance, held_is_idle
    runner.feed(events)
    runner.finish()
    return calls


def _cuts(cluster, calls) -> list[int]:
    """Cuts after an advance: where the most connections are open, the most client requests,
    acceptors and proxy dials are kept, and the most DNS lookups (the first of each)."""
    op, states = Stitcher(cluster.index()), {}
    best: dict[str, tuple[int, int]] = {}
    for i, (what, key, arg) in enumerate(calls):
        st = states.setdefault(key, op.new_state())
        op.process(st, key, arg) if what == "p" else op.advance(st, key, arg)
        if what == "a":
            if op.is_idle(st):
                del states[key]
            conns = [c for s in states.values() for c in s["conns"].values()]
            counts = {"conns": len(conns), "creq": sum(len(c["creq"]) for c in conns),
                      "sv": sum(len(c["sv"]) for c in conns), "px": sum(len(c["px"]) for c in conns),
                      "lk": sum(len(x) for s in states.values() for x in s["lk"].values())}
            for what_, n in counts.items():
                if n > best.get(what_, (0, 0))[0]:
                    best[what_] = (n, i + 1)
    return sorted({cut for _n, cut in best.values()})


def _prefix(cluster, calls, cut) -> tuple[list[dict], dict]:
    """The chains the stage emits up to the cut, and its states there."""
    op, states, chains = Stitcher(cluster.index()), {}, []
    for what, key, arg in calls[:cut]:
        st = states.setdefault(key, op.new_state())
        outs = op.process(st, key, arg) if what == "p" else op.advance(st, key, arg)
        chains += [v for topic, _k, v in outs if topic == CHAINS_TOPIC]
        if what == "a" and op.is_idle(st):
            del states[key]
    return chains, states


def _replay(op: Stitcher, calls, states: dict) -> list[dict]:
    chains = []
    for what, key, arg in calls:
        st = states.get(key)
        if st is None:
            st = states[key] = op.new_state()
        outs = op.process(st, key, arg) if what == "p" else op.advance(st, key, arg)
        chains += [v for topic, _k, v in outs if topic == CHAINS_TOPIC]
        if what == "a" and op.is_idle(st):
            del states[key]
    for key in sorted(states):
        chains += [v for topic, _k, v in op.flush(states[key], key) if topic == CHAINS_TOPIC]
    return chains


def _write_states(path: Path) -> None:
    cluster, events = _traffic()
    calls = _stitch_calls(cluster, events)
    written = {}
    for cut in _cuts(cluster, calls):
        _chains, states = _prefix(cluster, calls, cut)
        written[str(cut)] = {key: dumps_state(st).decode() for key, st in sorted(states.items())}
    path.write_text(json.dumps(written, indent=0) + "\n")


def test_dict_form_states_resume_to_the_same_chains():
    cluster, events = _traffic()
    calls = _stitch_calls(cluster, events)
    whole = _replay(Stitcher(cluster.index()), calls, {})
    assert len(whole) >= 20 and any(c["status"] == "broken" for c in whole)
    written = json.loads(DICT_FORM.read_text())
    held = {"conns": 0, "creq": 0, "sv": 0, "px": 0, "lk": 0}
    for cut, raw_states in written.items():
        old_states = {key: loads_state(raw.encode()) for key, raw in raw_states.items()}
        for st in old_states.values():
            for conn in st["conns"].values():
                assert "qd" not in conn  # the form before this version
                held["conns"] += 1
                for k in ("creq", "sv", "px"):
                    held[k] += len(conn[k])
                    assert all(isinstance(r, dict) for r in conn[k])
            held["lk"] += len(st["lk"])
        _assert_resumes(cluster, calls, whole, int(cut), raw_states)
    assert all(held.values()), held  # every kind of record was held by some cut


def _accepting_side_only(conn) -> bool:
    """A connection only its acceptors saw (no client, no proxy dial): since session 17 it leaves settle after
    they have all closed, not idle after (stitch._conn_deadline). States written before hold such connections
    until their idle timeout, and their acceptor records have no close (A_CLOSED)."""
    return conn["cl"] is None and not conn["px"]


def _assert_resumes(cluster, calls, whole, cut: int, raw_states: dict) -> None:
    """States written at `cut` resume to the chains of the uninterrupted run."""
    before, states_now = _prefix(cluster, calls, cut)
    assert set(states_now) <= set(raw_states)
    for key in set(raw_states) - set(states_now):  # idle now: it held only connections this code let go
        assert all(_accepting_side_only(c) for c in json.loads(raw_states[key])["conns"].values()), (cut, key)
    for restore in (True, False):  # through restore (the worker), or handed over as they are
        op = Stitcher(cluster.index())
        states = {key: op.restore(loads_state(raw.encode())) if restore else loads_state(raw.encode())
                  for key, raw in raw_states.items()}
        assert before + _replay(op, calls[cut:], states) == whole, (cut, restore)


def test_list_form_states_resume_to_the_same_chains():
    """States as the code at d66efa0 wrote them (conns as dicts, their records as lists)."""
    cluster, events = _traffic()
    calls = _stitch_calls(cluster, events)
    whole = _replay(Stitcher(cluster.index()), calls, {})
    written = json.loads(LIST_FORM.read_text())
    for cut, raw_states in written.items():
        assert any(json.loads(raw)["conns"] for raw in raw_states.values())
        _assert_resumes(cluster, calls, whole, int(cut), raw_states)


def test_format3_states_resume_to_the_same_chains():
    """States as checkpoint format 3 wrote them (the last form before lookups became lists)."""
    cluster, events = _traffic()
    calls = _stitch_calls(cluster, events)
    whole = _replay(Stitcher(cluster.index()), calls, {})
    written = json.loads(FORMAT3.read_text())
    held = {"conns": 0, "lk": 0, "dsrv": 0, "tq": 0, "lq": 0, "dq": 0}
    for cut, raw_states in written.items():
        for raw in raw_states.values():
            st = json.loads(raw)
            for what in held:
                held[what] += len(st[what])
        _assert_resumes(cluster, calls, whole, int(cut), raw_states)
    assert all(held.values()), held  # every kind of record was held by some cut


def _as_written_before(restored: dict, now: dict | None, settle_ns: int) -> tuple[bytes, bytes]:
    """A state written before session 17 (restored) and the state this code holds at the same cut (`now`,
    None: idle), each as JSON, without what the early leave of accepting-side-only connections changed: the
    connections this code let go (each settle or more after its last event) out of the old one, the acceptors'
    closes and those connections' timer entries out of both (_accepting_side_only)."""
    old = json.loads(dumps_state(restored))
    cur = json.loads(dumps_state(now)) if now is not None else None
    for k, conn in list(old["conns"].items()):
        if cur is None or k not in cur["conns"]:
            assert _accepting_side_only(conn) and conn["t1"] + settle_ns <= old["wm"], k
            del old["conns"][k]
    if cur is None:
        assert not old["conns"]
        return b"", b""
    for st in (old, cur):
        for conn in st["conns"].values():
            for a in conn["sv"]:
                a[11] = None  # A_CLOSED
            if _accepting_side_only(conn):
                conn["qd"] = None
        # the conns' live timer entries (the rest are stale); "next" is their head's, a lookup's or a trim's
        # (wherever they are queued: the heap or the FIFOs beside it, stitch._tq_push)
        queued = st["tq"] + [x for fifo in ("tqn", "tqs", "tqp") for x in st.pop(fifo, ())]
        st["tq"] = sorted([dl, k] for dl, k in queued if k in st["conns"] and dl == st["conns"][k]["qd"])
        st.pop("next")
    return orjson.dumps(old), orjson.dumps(cur)


def test_format3_states_upgrade_to_the_states_written_now():
    """Checkpoint format 4 holds lookups, queries, answers, DNS servers' records, lookup summaries and
    a connection's client and connect as lists (and no "dq" queue): a format-3 state, restored, is the state this code
    holds at the same cut, byte for byte, but for what the early leave of accepting-side-only connections changed
    (_as_written_before)."""
    cluster, events = _traffic()
    calls = _stitch_calls(cluster, events)
    written = json.loads(FORMAT3.read_text())
    for cut, raw_states in written.items():
        _chains, states = _prefix(cluster, calls, int(cut))
        op = Stitcher(cluster.index())
        assert set(states) <= set(raw_states)
        for key, raw in raw_states.items():
            old, now = _as_written_before(op.restore(loads_state(raw.encode())), states.get(key), op.settle_ns)
            assert old == now, (cut, key)
            if key not in states:
                continue
            st = json.loads(now)
            assert st["v"] == STATE_FORM and "dq" not in st
            assert all(isinstance(lk, list) and all(isinstance(q, list) for q in lk[4])
                       for lookups in st["lk"].values() for lk in lookups)
            assert all(isinstance(rec, list) for rec in st["dsrv"].values())
            for conn in st["conns"].values():
                assert all(isinstance(conn[k], list) for k in ("cl", "cn", "dns") if conn[k] is not None)


def test_current_states_round_trip():
    cluster, events = _traffic()
    calls = _stitch_calls(cluster, events)
    whole = _replay(Stitcher(cluster.index()), calls, {})
    for cut in _cuts(cluster, calls):
        before, states = _prefix(cluster, calls, cut)
        op = Stitcher(cluster.index())
        # durable() when nothing is buffered; else the whole state (no input is re-read here)
        resumed = {key: op.restore(loads_state(dumps_state(op.durable(st)) if not st["runs"] else dumps_state(st)))
                   for key, st in states.items()}
        assert before + _replay(op, calls[cut:], resumed) == whole


if __name__ == "__main__":
    _write_states(Path(sys.argv[1]))


def _replay_queue_sizes(op: Stitcher, calls) -> tuple[list[dict], int]:
    """_replay's chains, and the timer queues' entries beyond their open conns after each timer
    pass, summed over the passes."""
    timers, excess = op._timers, [0]

    def counted_timers(st, now, out, final):
        timers(st, now, out, final)
        excess[0] += len(st["tq"]) + sum(len(st[fifo]) for fifo in ("tqn", "tqs", "tqp")) - len(st["conns"])

    op._timers = counted_timers
    return _replay(op, calls, {}), excess[0]


def test_compacted_timer_queue_gives_the_same_chains(monkeypatch):
    """The conns' timer queue rebuilt from the conns at every timer pass that leaves a stale
    entry (factor 1, no floor) gives the chains of a queue never rebuilt, which keeps them."""
    import svctrace.streams.core.stitch as stitch

    cluster, events = _traffic()
    calls = _stitch_calls(cluster, events)
    monkeypatch.setattr(stitch, "_TQ_COMPACT_FACTOR", 10**9)
    kept, kept_excess = _replay_queue_sizes(Stitcher(cluster.index()), calls)
    monkeypatch.setattr(stitch, "_TQ_COMPACT_FACTOR", 1)
    monkeypatch.setattr(stitch, "_TQ_COMPACT_FLOOR", 0)
    compacted, compacted_excess = _replay_queue_sizes(Stitcher(cluster.index()), calls)
    assert kept_excess > 0 and compacted_excess == 0, (kept_excess, compacted_excess)
    assert len(kept) > 100
    assert json.dumps(compacted, sort_keys=True) == json.dumps(kept, sort_keys=True)
