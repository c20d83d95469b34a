"""The public contract: every topic has a schema, examples validate, bad ones are
rejected with an error naming the field, and models round-trip through orjson."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import yaml

from svctrace.schemas import SchemaError, SyscallBatch, SyscallEvent, decode_batch, encode_batch, validate
from svctrace.schemas import catalogue
from svctrace.schemas.models import AgentStats, DeadLetter, DecodeError, make_event
from svctrace.schemas.validation import SCHEMA_NAMES, errors, schema_document

EXAMPLES = Path(catalogue.HERE) / "examples"
INVALID = yaml.safe_load((EXAMPLES / "invalid" / "expected.yaml").read_text())


def test_every_topic_names_a_schema_with_name_and_version():
    topics = catalogue.load_catalogue()
    assert {t.value_schema for t in topics.values()} <= set(SCHEMA_NAMES)
    for name in SCHEMA_NAMES:
        doc = schema_document(name)
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert doc["properties"]["schema"]["const"] == f"svctrace.{name}"
        assert doc["properties"]["version"]["const"] == 1


def test_code_level_topic_names_are_catalogued():
    names = {v for k, v in vars(catalogue).items() if k.isupper() and isinstance(v, str) and v.startswith("svctrace.")}
    assert names == set(catalogue.load_catalogue())


def test_unknown_topic_name_fails_loudly():
    with pytest.raises(KeyError, match="not in the topic catalogue"):
        catalogue.topic("svctrace.sycalls")


def test_compacted_topic_is_the_metadata_topic():
    compacted = [t.name for t in catalogue.load_catalogue().values() if t.compacted]
    assert compacted == [catalogue.K8S_OBJECTS]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_valid_example_validates(name):
    validate(name, orjson.loads((EXAMPLES / "valid" / f"{name}.json").read_bytes()))


def test_every_schema_has_valid_and_invalid_examples():
    assert {p.stem for p in (EXAMPLES / "valid").glob("*.json")} == set(SCHEMA_NAMES)
    assert {schema for schema, _ in INVALID.values()} == set(SCHEMA_NAMES)
    assert set(INVALID) == {p.name for p in (EXAMPLES / "invalid").glob("*.json")}


@pytest.mark.parametrize("filename", sorted(INVALID))
def test_invalid_example_is_rejected_naming_the_field(filename):
    schema, field = INVALID[filename]
    doc = orjson.loads((EXAMPLES / "invalid" / filename).read_bytes())
    with pytest.raises(SchemaError) as info:
        validate(schema, doc)
    assert info.value.path == field
    assert f"field {field}" in str(info.value)


def _event(**kw):
    base = dict(ts=1, node="node-a", n=1, pid=10, tid=11, comm="curl", kind="send", syscall="sendto", fd=3, res=5)
    return SyscallEvent(**(base | kw))


def test_syscall_batch_roundtrip_keeps_payload_bytes():
    events = [_event(data=b"\x00\xffGET / HTTP/1.1\r\n", size=99), _event(n=2, kind="lost", res=7, data=None)]
    raw = encode_batch(SyscallBatch("node-a", "scap", 3, events, lost=7))
    validate("syscall-batch", orjson.loads(raw))
    back = decode_batch(raw)
    assert back.events == events and back.lost == 7 and back.seq == 3


def test_make_event_is_the_dataclass_constructor_in_field_order():
    full = SyscallEvent(ts=1, node="n", n=2, pid=3, tid=4, comm="c", kind="send", syscall="sendto", fd=5, res=6,
                        errno=None, proto="tcp", family="ipv4", role="client", local_ip="10.0.0.1", local_port=7,
                        remote_ip="10.0.0.2", remote_port=80, addr_ip="10.0.0.3", addr_port=8, size=6,
                        data=b"GET /", redacted=True, exe="/bin/c", container_id="abc", cgroup_id=9, netns=10)
    made = make_event(1, "n", 2, 3, 4, "c", "send", "sendto", 5, 6, None, "tcp", "ipv4", "client", "10.0.0.1", 7,
                      "10.0.0.2", 80, "10.0.0.3", 8, 6, b"GET /", True, "/bin/c", "abc", 9, 10)
    assert made == full and hash(made) == hash(full) and made.to_dict() == full.to_dict()
    short = make_event(1, "n", 2, 3, 4, "c", "close", "close", 5, 0)
    assert short == SyscallEvent(ts=1, node="n", n=2, pid=3, tid=4, comm="c", kind="close", syscall="close", fd=5, res=0)
    with pytest.raises(TypeError):
        make_event(1, "n")
    with pytest.raises(AttributeError):
        made.ts = 2  # still immutable


def test_to_dict_matches_encoder():
    batch = SyscallBatch("node-a", "ebpf", 0, [_event(data=b"abc")])
    assert orjson.loads(encode_batch(batch)) == batch.to_dict()


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "not JSON"),
        (b'{"schema": "svctrace.chain", "version": 1}', "$.schema"),
        (b'{"schema": "svctrace.syscall-batch", "version": 9}', "$.version"),
        (b'{"schema": "svctrace.syscall-batch", "version": 1, "events": []}', "$.node"),
        (b'{"schema": "svctrace.syscall-batch", "version": 1, "node": "n", "source": "x", "seq": 0,'
         b' "events": [{"ts": 1, "bogus": 2}]}', "$.events"),
    ],
)
def test_decode_batch_rejects_bad_records_with_reason(raw, reason):
    with pytest.raises(DecodeError, match=reason.replace("$", r"\$")):
        decode_batch(raw)


def test_agent_stats_and_dead_letter_models_validate():
    validate("agent-stats", AgentStats(node="n", source="ebpf", ts=1, captured=5, published=4, dropped=1).to_dict())
    dl = DeadLetter(stage="enrich", reason="bad", topic="svctrace.syscalls", value=b"\x00", key=None, offset=3)
    validate("dead-letter", dl.to_dict())
    assert errors("dead-letter", dl.to_dict()) == []


def test_syscall_event_literals_are_the_schema_enumerations():
    """SyscallEvent's Literal annotations (what msgspec decodes the enumerated fields into, interned)
    list exactly the values syscall-batch.schema.json enumerates."""
    from typing import get_args, get_type_hints

    props = schema_document("syscall-batch")["$defs"]["event_fields"]["properties"]
    hints = get_type_hints(SyscallEvent)
    for name in ("kind", "proto", "family", "role"):
        literal = [a for a in get_args(hints[name]) if a is not type(None)]
        values = literal[0] if name != "kind" else hints[name]
        assert list(get_args(values)) + ([None] if name != "kind" else []) == props[name]["enum"], name
