"""svctrace's sans-IO core: decoding, enrichment, stitching and alert rules.

Pure code: no Kafka, no Faust, no network, no wall clock. Time is event time
(SyscallEvent.ts); state is bounded and expires by event time.

The operator API (what both runners drive)
------------------------------------------
`graph.Graph(index, Settings())` builds the three operators for one
`ClusterIndex` and maps each input topic to its operator (`graph.consumers`):

    svctrace.syscalls            key node           -> Graph.enrich  (Enricher)
    svctrace.flows               key bucket "b0007" -> Graph.stitch  (Stitcher)
    svctrace.alerts.occurrences  key "rule|labels"  -> Graph.alerts  (Alerter)

Every operator `op` has:

    op.new_state() -> dict                      fresh per-key state (JSON-able)
    op.process(state, key, value) -> outputs    one input value for that key
    op.advance(state, key, watermark_ns) -> outputs   event-time timers
    op.flush(state, key) -> outputs             end of input: close everything
    op.deadline(state) -> int | None            watermark at which advance() has work
    op.is_idle(state) -> bool                   state may be deleted (it has expired)
    op.durable(state) -> dict                   what a checkpoint must keep (no re-readable input)
    op.restore(durable) -> dict                 a durable (or full) state -> a state to drive

and the stitch and alerts operators, whose durable states are large (open connections, DNS lookups; a
suppression window's deduplicated chains), also:

    op.durable_parts(state) -> (header, changed)  its scalars, and only the entries that changed since
                                                  the last call ({subkey: entry, None for one gone};
                                                  every entry at the first call, or after untrack)
    op.restore_parts(header, entries) -> dict     a header and all its entries -> a state to drive

state["wm"] (enrich, stitch): every input event with ts < wm has been applied
(enrich: released downstream; stitch: applied to the chain state); the stage's
input buffer holds only events with ts >= wm, and an event arriving with ts < wm
is counted (state["late"]) and dropped. So a shell that acknowledges an input
record once all its events are older than wm, and re-reads unacknowledged
records after a restart, may checkpoint `durable(state)` (the state without
its input buffer) and resume from `restore(...)`: the re-read events older
than wm are dropped as late, the others buffered again. The alerts stage
buffers nothing: durable(state) is the state (but its change marks). Alerter.flush emits every
window's record but keeps the window until the watermark passes end + lateness
(is_idle is False until then), so a later occurrence counts on under the same
alert_id; a shell that flushes idle partitions keeps such state.

`outputs` is a list of (topic, key, value) triples: values on a consumed topic go
to that topic's operator (through Kafka on Faust, directly in-process); values on
svctrace.chains / svctrace.alerts / svctrace.events.enriched are final records in
their schema's form. Input values: enrich takes a SyscallBatch, a list of
SyscallEvents or one SyscallEvent; stitch takes an enriched-batch dict whose
events are EnrichedEvent objects (in-process: enriched.py, no dict per event)
or their schema dicts as read from Kafka (payload `data` as bytes or base64
text); alerts takes an occurrence dict. The enrich stage's batches hold their
events in an enriched.EventRun (a list that also gives their node and highest n:
one node's events, in (ts, n) order), so the stitch stage may take a run whole.
Enriched batches carry EnrichedEvents: `schemas.models.dumps` / `graph.encode_value`
write them in their schema form (enriched.to_wire), `graph.enriched_to_wire(batch)`
gives the dict form. A Stitcher whose `encode_chain` is set (a function: record -> bytes; the
worker's) gives each chain as those bytes instead of its dict, written as the chain is made.

Watermarks: each stage buffers its input and applies it in event-time order
once the watermark passes it, so arrival order within the lateness and
duplicates ((node, n) seen twice) do not change outputs. A caller computes the
watermark as (largest event ts seen) - lateness; `Settings` holds the
latenesses. Events older than a stage's watermark are counted (state["late"])
and dropped; the enrich stage also sends them on as loss markers (the next
advance's "lost" list, every bucket), unless they are redeliveries (n not above
every n it released or dropped before), so the chains they overlap are
"incomplete", never "broken". State <-> bytes: `graph.dumps_state(state)` / `graph.loads_state(raw)`.

Timers (stitch: a connection's idle timeout, the settle time after a close or a
response, an unclaimed lookup's timeout) fire at their own deadline, between the
events they fall between: inside one advance(), the timers due at or before an
event's ts fire before that event is applied (tie rule: a timer due at ts T comes
before an event at T, as when a watermark stops exactly at T). So outputs do not
depend on how far each advance moves the watermark: one jump (a worker catching
up, an end-of-input flush) and many small steps (analyze) give the same chains and
alerts, and one bucket emits them in the same order (tests/test_core_parity.py).

Metadata joins (enrich and stitch) ask the ClusterIndex through memo.MemoIndex,
as of the end of the event's second: answers are a pure function of (question,
second), so every runner and arrival order gets the same ones. A runner that
applies k8s records to the index while events flow calls `graph.metadata_changed()`
after applying them.

Ids are deterministic: chain_id from the chain's anchor event (node, n), its
client endpoint and the request index; alert_id from rule + labels + the start
of the rule's suppression window on a fixed grid (keys.py). Flow buckets use a
stable crc32 (keys.flow_bucket), never Python's hash().

The in-process runner: `runner.run(events_or_batches, index) -> RunResult` with
`.chains` and `.alerts` (schemas/chain.schema.json, alert.schema.json). Its
event-time clock is the enrich stage's `newest_ts` (the largest ts process() was
given), read at each step: the runner itself only files events by node.

Chains close on the client's close (+ settle_ns for the other sides' events),
after idle_ns without events, or per request once its response is in; a UDP
flow also udp_window_ns after its first datagram; unclaimed DNS lookups close
after lookup_timeout_ns. An occurrence reaches the alerts stage
at most Settings.alerts_lateness_ns after its time; a suppression window closes
that long after its end.

Modules: dns.py (dnspython, memoized), http.py (httptools/llhttp), keys.py,
rules.py (the alert catalogue: ONE table), memo.py, enrich.py, stitch.py,
alerts.py, graph.py, runner.py. native.py: the same modules compiled by Cython,
used when built from exactly these sources (NATIVE says which run).
"""
from . import native

NATIVE = native.select(__path__)  # before any module it compiles is imported

from .graph import Graph, Settings, dumps_state, loads_state  # noqa: E402
from .runner import RunResult, Runner, run  # noqa: E402

__all__ = ["Graph", "Settings", "Runner", "RunResult", "run", "dumps_state", "loads_state", "NATIVE"]
