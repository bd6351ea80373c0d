"""The task message: protocol 2 fields, serializers, compression, accept_content."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor.exceptions import ContentDisallowed, DecodeError
from conveyor.messages import Envelope, Message, decode
from conveyor.serialization import accepted_content_types


def test_wire_format_follows_celery_protocol_2() -> None:
    eta = datetime(2030, 1, 1, tzinfo=UTC)
    message = Message(
        "tasks.add", "id-1", (4, 3), {"z": 1}, shadow="adder", eta=eta, retries=2,
        time_limit=30, soft_time_limit=10, headers={"custom": "x"}, priority=5,
    )  # fmt: skip
    envelope = json.loads(message.encode())
    headers = envelope["headers"]
    for key in ("lang", "task", "id", "root_id", "parent_id", "group", "shadow", "eta", "expires", "retries",
                "timelimit", "argsrepr", "kwargsrepr", "origin", "ignore_result"):  # fmt: skip
        assert key in headers, key
    assert headers["task"] == "tasks.add" and headers["id"] == "id-1" and headers["root_id"] == "id-1"
    assert headers["timelimit"] == [30, 10]  # [hard, soft], as Celery's code sends it
    assert headers["eta"] == "2030-01-01T00:00:00+00:00" and headers["shadow"] == "adder"
    assert headers["argsrepr"] == "(4, 3)" and headers["custom"] == "x"
    assert envelope["content-type"] == "application/json"
    assert envelope["properties"]["correlation_id"] == "id-1" and envelope["properties"]["priority"] == 5
    body = json.loads(base64.b64decode(envelope["body"]))
    assert body == [[4, 3], {"z": 1}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]


def test_message_is_frozen() -> None:
    message = Message("t")
    with pytest.raises(AttributeError):
        message.task = "other"  # type: ignore[misc]


@pytest.mark.parametrize("envelope", ["celery", "compact"])
@pytest.mark.parametrize("serializer", ["json", "msgpack", "yaml", "pickle"])
@pytest.mark.parametrize("compression", [None, "zlib", "bzip2", "gzip", "lzma", "zstd"])
def test_round_trip(serializer: str, compression: str | None, envelope: str) -> None:
    message = Message("t.x", args=(1, "two", [3.0]), kwargs={"k": {"n": None}}, expires=datetime.now(UTC))
    data = message.encode(serializer, compression, envelope)
    decoded = decode(data, accepted_content_types([serializer]))
    assert decoded.args == (1, "two", [3.0]) and decoded.kwargs == {"k": {"n": None}}
    assert decoded.id == message.id and decoded.expires == message.expires
    assert decoded.compression == (None if compression is None else decoded.compression)


def test_refused_content_type_names_it() -> None:
    data = Message("t.x", args=(1,)).encode("pickle")
    envelope = Envelope.parse(data)
    assert envelope.task_id and envelope.task_name == "t.x"  # still known, to record the FAILURE
    with pytest.raises(ContentDisallowed, match="application/x-python-serialize"):
        envelope.message(accepted_content_types(["json"]))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe not json", "not a JSON envelope"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"headers": {"id": "x"}}', "'task' is missing"),
        (b'{"headers": {"task": "t", "id": "x"}, "body": "!!", "properties": {"body_encoding": "base64"}}', "base64"),
    ],
)
def test_malformed_envelopes_say_why(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        Envelope.parse(data)


def test_malformed_body_says_why() -> None:
    envelope = {
        "headers": {"task": "t", "id": "x"},
        "body": base64.b64encode(b'{"not": "a list"}').decode(),
        "content-type": "application/json",
        "properties": {"body_encoding": "base64"},
    }
    with pytest.raises(DecodeError, match="args, kwargs, embed"):
        decode(json.dumps(envelope).encode())


def test_naive_eta_is_utc() -> None:
    envelope = json.loads(Message("t", eta=datetime(2030, 1, 1, tzinfo=UTC)).encode())
    envelope["headers"]["eta"] = "2030-01-01T08:00:00"
    decoded = decode(json.dumps(envelope).encode())
    assert decoded.eta == datetime(2030, 1, 1, 8, tzinfo=UTC)
    assert decoded.eta - datetime(2030, 1, 1, tzinfo=UTC) == timedelta(hours=8)


def test_compact_envelope_carries_every_field_in_a_third_of_the_size() -> None:
    full = Message(
        "tasks.add", "id-1", (4, 3), {"z": 1}, root_id="root", parent_id="parent", group="g", group_index=2,
        shadow="adder", eta=datetime(2030, 1, 1, tzinfo=UTC), retries=2, time_limit=30,
        soft_time_limit=10, ignore_result=True, callbacks=[{"task": "cb"}], headers={"custom": "x"}, priority=5,
    )  # fmt: skip
    decoded = decode(full.encode(format="compact"))
    fields = ["task", "id", "args", "kwargs", "root_id", "parent_id", "group", "group_index", "shadow", "eta"]
    fields += ["retries", "time_limit", "soft_time_limit", "ignore_result", "callbacks", "headers", "priority"]
    for field in fields:
        assert getattr(decoded, field) == getattr(full, field), field
    small = Message("bench.noop", args=(1,))
    assert len(small.encode(format="compact")) * 3 < len(small.encode(format="celery"))
    assert len(small.encode(format="compact")) < 60
    assert decode(small.encode(format="compact")).id == small.id
    assert decode(Message("t", id="my-own-id").encode(format="compact")).id == "my-own-id"


def test_malformed_compact_envelope_says_why() -> None:
    with pytest.raises(DecodeError, match="compact message envelope"):
        Envelope.parse(b"\xc1\x93garbage")


def test_plain_compact_call_decodes_to_the_same_message_as_the_full_envelope() -> None:
    plain = Message("bench.noop", args=(1,), kwargs={"k": 2})
    assert len(Envelope.parse(plain.encode(format="compact")).headers) == 2  # takes the plain-call path
    from_compact, from_celery = decode(plain.encode(format="compact")), decode(plain.encode(format="celery"))
    assert {**vars(from_compact), "origin": None} == {**vars(from_celery), "origin": None}


def test_new_ids_are_random_version_4_uuids() -> None:
    import uuid

    from conveyor.messages import new_id

    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for task_id in ids:
        parsed = uuid.UUID(task_id)
        assert str(parsed) == task_id and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_optional_serializers_are_imported_at_first_use() -> None:
    """Every producer and worker imports conveyor: yaml and zstandard (40 ms) wait until used."""
    code = (
        "import sys, conveyor, conveyor.cli\n"
        "from conveyor import serialization\n"
        "assert not {'yaml', 'zstandard', 'msgpack'} & set(sys.modules), sys.modules.keys()\n"
        "data, kind = serialization.dumps({'a': 1}, 'yaml', 'zstd')\n"
        "assert serialization.loads(data, kind, compression='application/zstd') == {'a': 1}\n"
        "assert {'yaml', 'zstandard'} <= set(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"headers": {"retries": "abc"}}, "'retries' must be a whole number"),
        ({"headers": {"timelimit": 5}}, "'timelimit' must be [hard, soft]"),
        ({"headers": {"timelimit": ["x", None]}}, "'timelimit' must hold seconds"),
        ({"properties": {"priority": "high"}}, "'priority' must be a whole number from 0 to 255"),
        ({"properties": {"priority": 300}}, "'priority' must be a whole number from 0 to 255"),
        ({"headers": {"group_index": -1}}, "'group_index' must be a whole number"),
        ({"headers": {"parent_id": ["p"]}}, "'parent_id' must be a string"),
        ({"headers": {"ignore_result": "yes"}}, "'ignore_result' must be true or false"),
    ],
)
def test_a_field_of_the_wrong_type_or_range_is_a_decode_error_naming_it(change: dict[str, Any], reason: str) -> None:
    envelope = json.loads(Message("t.add", id="p1", args=(1, 2)).encode(format="celery"))
    for part, fields in change.items():
        envelope[part].update(fields)
    with pytest.raises(DecodeError) as raised:
        decode(json.dumps(envelope).encode())
    assert reason in str(raised.value)


def test_an_envelope_nested_100000_deep_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="nested too deeply"):
        decode(b"[" * 100_000 + b"]" * 100_000)
    body = base64.b64encode(b"[" * 100_000 + b"]" * 100_000).decode()
    envelope = json.loads(Message("t.add", id="p1").encode(format="celery"))
    envelope["body"] = body
    with pytest.raises(DecodeError):
        decode(json.dumps(envelope).encode())


def test_a_chord_header_that_is_not_an_id_and_a_size_is_a_decode_error() -> None:
    from conveyor.canvas import chord_part

    assert chord_part({"conveyor_chord": ["c", 3]}) == ("c", 3)
    assert chord_part({}) is None
    with pytest.raises(DecodeError, match="conveyor_chord"):
        chord_part({"conveyor_chord": ["c", "x"]})
