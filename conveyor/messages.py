"""The task message, and the only code that knows its wire format.

A message follows Celery's task protocol version 2 (see docs/protocol.md): the
headers name the task and carry its metadata, the body is
`[args, kwargs, {callbacks, errbacks, chain, chord}]` serialized with the task
serializer, and the envelope around both is kombu's JSON envelope with a
base64 body. Brokers only ever see the envelope as opaque bytes.
"""

from __future__ import annotations

import base64
import json
import os
import socket
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from reprlib import Repr
from typing import TYPE_CHECKING, Any

from conveyor import serialization
from conveyor.exceptions import DecodeError

if TYPE_CHECKING:
    from conveyor.calls import CallOptions

_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"
_REPR = Repr()
_REPR.maxstring = _REPR.maxother = 1024
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 64


def new_id() -> str:
    """A new task id: a random (version 4) UUID, as Celery uses; made from its 16 random bytes
    directly, at less than half the cost of `str(uuid.uuid4())` (every `delay()` makes one)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return str(_unpack_id(bytes(raw)))


def utcnow() -> datetime:
    return datetime.now(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_iso(value: Any, header: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise DecodeError(f"header {header!r} is not an ISO-8601 time: {value!r}") from None
    # Protocol 2: a time without an offset is UTC.
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Message:
    """One task call. Frozen: change it with `dataclasses.replace`."""

    task: str
    id: str = field(default_factory=new_id)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    shadow: str | None = None
    eta: datetime | None = None
    expires: datetime | None = None
    retries: int = 0
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    origin: str = _ORIGIN
    callbacks: list[dict[str, Any]] | None = None
    errbacks: list[dict[str, Any]] | None = None
    chain: list[dict[str, Any]] | None = None
    chord: dict[str, Any] | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    """Custom headers given to `apply_async(headers=...)`."""
    priority: int = 0
    reply_to: str | None = None
    content_type: str = "application/json"
    compression: str | None = None

    def __post_init__(self) -> None:
        if self.root_id is None:
            object.__setattr__(self, "root_id", self.id)

    @classmethod
    def _of_fields(cls, fields: dict[str, Any]) -> Message:
        """A message from its fields (the others default), past the frozen `__init__`, which
        costs ten times more (one `object.__setattr__` per field): every `delay()` and every
        delivery makes one."""
        message = object.__new__(cls)
        message.__dict__.update(_DEFAULTS)
        message.__dict__.update(fields)
        if message.root_id is None:
            message.__dict__["root_id"] = message.id
        return message

    @property
    def display_name(self) -> str:
        """The name shown in logs and monitoring: the shadow name when set."""
        return self.shadow or self.task

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or utcnow()) >= self.expires

    def encode(self, serializer: str = "json", compression: str | None = None, format: str = "celery") -> bytes:  # noqa: A002
        """The message as the bytes a broker stores.

        `format="celery"`: kombu's JSON envelope, readable by Celery.
        `format="compact"`: the same headers and body in a msgpack envelope with
        defaults left out, a third of the size (see docs/protocol.md).
        """
        embed = {
            "callbacks": self.callbacks,
            "errbacks": self.errbacks,
            "chain": self.chain,
            "chord": self.chord,
        }
        if format == "compact":
            return self._encode_compact(serializer, compression, embed)
        body, content_type = serialization.dumps([list(self.args), self.kwargs, embed], serializer, compression)
        headers: dict[str, Any] = {
            **self.headers,
            "lang": "py",
            "task": self.task,
            "id": self.id,
            "shadow": self.shadow,
            "eta": _iso(self.eta),
            "expires": _iso(self.expires),
            "group": self.group,
            "group_index": self.group_index,
            "retries": self.retries,
            "timelimit": [self.time_limit, self.soft_time_limit],
            "root_id": self.root_id,
            "parent_id": self.parent_id,
            "argsrepr": _REPR.repr(tuple(self.args)),
            "kwargsrepr": _REPR.repr(self.kwargs),
            "origin": self.origin,
            "ignore_result": self.ignore_result,
        }
        if compression:
            headers["compression"] = serialization.codec(compression).content_type
        envelope = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "binary" if content_type != "application/json" else "utf-8",
            "content-type": content_type,
            "headers": headers,
            "properties": {
                "correlation_id": self.id,
                "reply_to": self.reply_to,
                "delivery_mode": 2,
                "priority": self.priority,
                "body_encoding": "base64",
            },
        }
        return json.dumps(envelope, separators=(",", ":")).encode()

    def _encode_compact(self, serializer: str, compression: str | None, embed: dict[str, Any]) -> bytes:
        import msgpack

        used = {k: v for k, v in embed.items() if v is not None}
        payload = [list(self.args), self.kwargs, used] if used else [list(self.args), self.kwargs]
        body, content_type = serialization.dumps(payload, serializer, compression)
        headers: dict[str, Any] = {**self.headers, "task": self.task, "id": _pack_id(self.id)}
        # Only what differs from the defaults is written (each test is cheaper than building them all).
        if self.shadow is not None:
            headers["shadow"] = self.shadow
        if self.eta is not None:
            headers["eta"] = _iso(self.eta)
        if self.expires is not None:
            headers["expires"] = _iso(self.expires)
        if self.group is not None:
            headers["group"] = self.group
        if self.group_index is not None:
            headers["group_index"] = self.group_index
        if self.retries:
            headers["retries"] = self.retries
        if self.time_limit or self.soft_time_limit:
            headers["timelimit"] = [self.time_limit, self.soft_time_limit]
        if self.root_id is not None and self.root_id != self.id:
            headers["root_id"] = _pack_id(self.root_id)
        if self.parent_id:
            headers["parent_id"] = _pack_id(self.parent_id)
        if self.ignore_result:
            headers["ignore_result"] = True
        if compression:
            headers["compression"] = serialization.codec(compression).content_type
        properties = {k: v for k, v in (("priority", self.priority), ("reply_to", self.reply_to)) if v}
        # JSON, the usual content type, is left implicit.
        kind = None if content_type == "application/json" else content_type
        packed: bytes = msgpack.packb([COMPACT_VERSION, kind, headers, properties, body], use_bin_type=True)
        return COMPACT_MAGIC + packed


#: Field defaults for `Message._of_fields` (the factories' fields, id, kwargs and headers, are always given).
_DEFAULTS = {f.name: f.default for f in fields(Message) if f.default is not MISSING}


def build_message(
    name: str,
    args: Any,
    kwargs: Any,
    call: CallOptions,
    *,
    message_id: str,
    parent_id: str | None = None,
    root_id: str | None = None,
    reply_to: str | None = None,
) -> Message:
    """The message for one call of task `name`: a pure function of its arguments.

    `parent_id`, `root_id` and `reply_to` apply where the call did not set its own (a task
    sent from a running one is its child, and reports where its parent does).
    """
    return Message._of_fields(
        {
            "task": name,
            "id": message_id,
            "args": tuple(args or ()),
            "kwargs": dict(kwargs or {}),
            "root_id": call.root_id or root_id,
            "parent_id": call.parent_id or parent_id,
            "group": call.group_id,
            "group_index": call.group_index,
            "shadow": call.shadow,
            "eta": call.eta,
            "expires": call.expires,
            "retries": call.retries,
            "time_limit": call.time_limit,
            "soft_time_limit": call.soft_time_limit,
            "ignore_result": call.ignore_result,
            "callbacks": call.link,
            "errbacks": call.link_error,
            "chain": call.chain,
            "headers": dict(call.headers),
            "priority": call.priority,
            "reply_to": call.reply_to or reply_to,
        }
    )


def _pack_id(value: str | None) -> str | bytes | None:
    """A canonical UUID as its 16 bytes (the compact envelope); any other id unchanged."""
    if value is None or len(value) != 36:
        return value
    try:
        packed = bytes.fromhex(value.replace("-", ""))
    except ValueError:
        return value
    # Only an id that unpacks to itself is packed (lower-case hex, dashes where uuid puts them).
    return packed if len(packed) == 16 and _unpack_id(packed) == value else value


def _unpack_id(value: Any) -> Any:
    if isinstance(value, bytes) and len(value) == 16:
        h = value.hex()  # what str(uuid.UUID(bytes=value)) gives, at a fraction of the cost
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return value


#: Protocol 2 headers that are Message fields; any other header is the caller's own.
_KNOWN_HEADERS = frozenset(
    {
        "lang", "task", "id", "shadow", "eta", "expires", "group", "group_index",
        "retries", "timelimit", "root_id", "parent_id", "argsrepr", "kwargsrepr",
        "origin", "ignore_result", "compression",
    }
)  # fmt: skip

#: First byte of a compact envelope: 0xc1 is never used by msgpack, and is not '{'.
COMPACT_MAGIC = b"\xc1"
COMPACT_VERSION = 1


@dataclass(frozen=True)
class Envelope:
    """A received message before its body is decoded.

    The headers are readable even when the body's content type is refused, so
    the worker can still record a FAILURE for the task id.
    """

    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    content_type: str

    @property
    def task_id(self) -> str | None:
        value = self.headers.get("id")
        return value if isinstance(value, str) else None

    @property
    def task_name(self) -> str | None:
        value = self.headers.get("task")
        return value if isinstance(value, str) else None

    @classmethod
    def parse(cls, data: bytes) -> Envelope:
        """Read the envelope (either format); a DecodeError says what is wrong with it."""
        if data[:1] == COMPACT_MAGIC:
            return cls._parse_compact(data)
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"message is not a JSON envelope: {exc}") from None
        except RecursionError:
            raise DecodeError("message envelope is nested too deeply") from None
        if not isinstance(raw, dict):
            raise DecodeError("message envelope is not a JSON object")
        headers, properties = raw.get("headers"), raw.get("properties") or {}
        if not isinstance(headers, dict) or not isinstance(properties, dict):
            raise DecodeError("message envelope has no headers")
        for required in ("task", "id"):
            if not isinstance(headers.get(required), str):
                raise DecodeError(f"message header {required!r} is missing or not a string")
        body = raw.get("body", "")
        if not isinstance(body, str):
            raise DecodeError(f"message body is not a string but {type(body).__name__}")
        try:
            body = (
                base64.b64decode(body, validate=True) if properties.get("body_encoding") == "base64" else body.encode()
            )
        except ValueError as exc:
            raise DecodeError(f"message body is not valid base64: {exc}") from None
        content_type = raw.get("content-type") or "application/json"
        if not isinstance(content_type, str):
            raise DecodeError("message content-type is not a string")
        return cls(headers, properties, body, content_type)

    @classmethod
    def _parse_compact(cls, data: bytes) -> Envelope:
        import msgpack

        try:
            version, content_type, headers, properties, body = msgpack.unpackb(data[1:], raw=False)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise DecodeError(f"compact message envelope is malformed: {exc}") from None
        if version != COMPACT_VERSION:
            raise DecodeError(f"compact message envelope version {version} is not supported")
        if not isinstance(headers, dict) or not isinstance(properties, dict) or not isinstance(body, bytes):
            raise DecodeError("compact message envelope has the wrong shape")
        if content_type is not None and not isinstance(content_type, str):
            raise DecodeError("compact message envelope's content type is not a string")
        for key in ("id", "root_id", "parent_id"):
            if key in headers:
                headers[key] = _unpack_id(headers[key])
        for required in ("task", "id"):
            if not isinstance(headers.get(required), str):
                raise DecodeError(f"message header {required!r} is missing or not a string")
        return cls(headers, properties, body, content_type or "application/json")

    def message(self, accept: frozenset[str] | None = None) -> Message:
        """Decode the body into a Message (ContentDisallowed or DecodeError on failure)."""
        compression = _text(self.headers, "compression")
        payload = serialization.loads(self.body, self.content_type, accept=accept, compression=compression)
        # Protocol 2 bodies are [args, kwargs, embed]; the compact envelope drops an empty embed.
        if not (isinstance(payload, (list, tuple)) and len(payload) in (2, 3)):
            raise DecodeError("message body is not [args, kwargs, embed]")
        args, kwargs, embed = (*payload, {}) if len(payload) == 2 else payload
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise DecodeError("message body has args that are not a list or kwargs not a dict")
        h = self.headers
        if not embed and len(h) == 2 and not self.properties and self.content_type == "application/json":
            # A plain call in the compact envelope (only task and id): every other field is its default.
            return Message._of_fields(
                {"task": h["task"], "id": h["id"], "args": tuple(args), "kwargs": kwargs, "headers": {}, "origin": ""}
            )
        if embed is None:
            embed = {}
        if not isinstance(embed, dict):
            raise DecodeError("message body's embed (callbacks, chain, chord) is not a dict")
        hard, soft = _time_limits(h.get("timelimit"))
        custom = {k: v for k, v in h.items() if k not in _KNOWN_HEADERS} if len(h) > 2 else {}
        p = self.properties
        return Message._of_fields(
            {
                "task": h["task"],
                "id": h["id"],
                "args": tuple(args),
                "kwargs": kwargs,
                "root_id": _text(h, "root_id") or h["id"],
                "parent_id": _text(h, "parent_id"),
                "group": _text(h, "group"),
                "group_index": _number(h, "group_index", 0, MAX_INT, None),
                "shadow": _text(h, "shadow"),
                "eta": _parse_iso(h.get("eta"), "eta"),
                "expires": _parse_iso(h.get("expires"), "expires"),
                "retries": _number(h, "retries", 0, MAX_INT, 0),
                "time_limit": hard,
                "soft_time_limit": soft,
                "ignore_result": _flag(h, "ignore_result"),
                "origin": _text(h, "origin") or "",
                "callbacks": _signatures(embed, "callbacks"),
                "errbacks": _signatures(embed, "errbacks"),
                "chain": _signatures(embed, "chain"),
                "chord": _signature(embed, "chord"),
                "headers": custom,
                "priority": _number(p, "priority", 0, 255, 0),
                "reply_to": _text(p, "reply_to"),
                "content_type": self.content_type,
                "compression": compression,
            }
        )


# Checks of received fields: each returns the field's value or raises DecodeError naming it.
MAX_INT = 2**31 - 1


def _shown(value: Any) -> str:
    return f"{type(value).__name__} {_REPR.repr(value)[:80]}"


def _text(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None or isinstance(value, str):
        return value
    raise DecodeError(f"{name!r} must be a string, not {_shown(value)}")


def _number(fields: dict[str, Any], name: str, low: int, high: int, default: int | None) -> int | None:
    value = fields.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DecodeError(f"{name!r} must be a whole number from {low} to {high}, not {_shown(value)}")
    return value


def _flag(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise DecodeError(f"{name!r} must be true or false, not {_shown(value)}")


def _time_limits(value: Any) -> tuple[float | None, float | None]:
    """Protocol 2's `timelimit`: [hard, soft], each seconds or null."""
    if value is None:
        return None, None
    if not isinstance(value, (list, tuple)) or len(value) > 2:
        raise DecodeError(f"'timelimit' must be [hard, soft], not {_shown(value)}")
    limits = [*value, None, None][:2]
    for limit in limits:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit >= 0):
            raise DecodeError(f"'timelimit' must hold seconds (or null), not {_shown(limit)}")
    return limits[0], limits[1]


def _is_signature(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("task"), str)


def _signature(embed: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = embed.get(name)
    if value is None or _is_signature(value):
        return value
    raise DecodeError(f"{name!r} must be a signature (a dict naming its task), not {_shown(value)}")


def _signatures(embed: dict[str, Any], name: str) -> list[dict[str, Any]] | None:
    value = embed.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        raise DecodeError(f"{name!r} must be a list of signatures, not {_shown(value)}")
    for item in value:
        if not _is_signature(item):
            raise DecodeError(f"{name!r} must hold signatures (dicts naming their task), not {_shown(item)}")
    return value


def decode(data: bytes, accept: frozenset[str] | None = None) -> Message:
    """Envelope bytes to a Message."""
    return Envelope.parse(data).message(accept)


__all__ = ["Envelope", "Message", "decode", "new_id", "utcnow"]
