"""Serializers and compression codecs, looked up by name or content type.

A serializer turns Python data into bytes and names the result with a content
type (`application/json`); a codec compresses those bytes and is named in the
message's `compression` header. Both tables follow kombu's names and content
types, so messages stay readable by Celery deployments.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import importlib
import importlib.util
import json
import lzma
import pickle
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from conveyor.exceptions import ContentDisallowed, DecodeError, ImproperlyConfigured

T = TypeVar("T")


@dataclass(frozen=True)
class Serializer:
    name: str
    content_type: str
    dumps: Callable[[Any], bytes]
    loads: Callable[[bytes], Any]


@dataclass(frozen=True)
class Codec:
    name: str
    content_type: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS


def _json_dumps(value: Any) -> bytes:
    # orjson is ~15x faster than the standard library on the worker's hot path (every
    # result and history entry); the standard library covers what orjson refuses
    # (integers beyond 64 bits, NaN), so both give the same JSON for the same data.
    try:
        return orjson.dumps(value, default=_json_default, option=_ORJSON_OPTIONS)
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()


def _json_loads(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # NaN and Infinity, which orjson refuses; real errors raise here


def _json_default(value: Any) -> Any:
    # The same conveniences Celery's JSON encoder gives: dates, UUIDs, sets, Decimals.
    import datetime
    import decimal
    import uuid

    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _optional(module: str) -> Callable[[], Any] | None:
    """An optional dependency, imported at its first use (every process imports this module,
    and yaml and zstandard alone take 40 ms to import); None when it is not installed."""
    if importlib.util.find_spec(module) is None:
        return None
    return functools.cache(lambda: importlib.import_module(module))


def _msgpack(msgpack: Callable[[], Any]) -> Serializer:
    return Serializer(
        "msgpack",
        "application/x-msgpack",
        lambda value: msgpack().packb(value, use_bin_type=True),
        lambda data: msgpack().unpackb(data, raw=False),
    )


def _yaml(yaml: Callable[[], Any]) -> Serializer:
    return Serializer(
        "yaml",
        "application/x-yaml",
        lambda value: yaml().safe_dump(value).encode(),
        lambda data: yaml().safe_load(data),
    )


def _zstd(zstandard: Callable[[], Any]) -> Codec:
    compressor = functools.cache(lambda: zstandard().ZstdCompressor())
    decompressor = functools.cache(lambda: zstandard().ZstdDecompressor())
    return Codec(
        "zstd",
        "application/zstd",
        lambda data: compressor().compress(data),
        lambda data: decompressor().decompress(data),
    )


_SERIALIZERS: dict[str, Serializer] = {}
_CODECS: dict[str, Codec] = {}


def register_serializer(serializer: Serializer) -> None:
    """Make a serializer available by its name and its content type."""
    _SERIALIZERS[serializer.name] = serializer
    _SERIALIZERS[serializer.content_type] = serializer


def register(
    name: str,
    encoder: Callable[[Any], str | bytes],
    decoder: Callable[[Any], Any],
    content_type: str,
    content_encoding: str = "utf-8",
) -> None:
    """kombu's `kombu.serialization.register`, as projects register their serializers for Celery:
    `encoder` may return text (encoded with `content_encoding`); `decoder` gets text back, or
    bytes when `content_encoding` is "binary"."""

    def dumps(value: Any) -> bytes:
        data = encoder(value)
        return data.encode(content_encoding) if isinstance(data, str) else data

    def loads(data: bytes) -> Any:
        return decoder(data if content_encoding == "binary" else data.decode(content_encoding))

    register_serializer(Serializer(name, content_type, dumps, loads))


def register_codec(codec: Codec) -> None:
    """Make a compression codec available by its name and its content type."""
    _CODECS[codec.name] = codec
    _CODECS[codec.content_type] = codec


register_serializer(Serializer("json", "application/json", _json_dumps, _json_loads))
register_serializer(
    Serializer(
        "pickle",
        "application/x-python-serialize",
        lambda value: pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL),
        pickle.loads,
    )
)
if (_module := _optional("msgpack")) is not None:
    register_serializer(_msgpack(_module))
if (_module := _optional("yaml")) is not None:
    register_serializer(_yaml(_module))

# kombu calls zlib output "application/x-gzip"; true gzip gets its own type.
register_codec(Codec("zlib", "application/x-gzip", zlib.compress, zlib.decompress))
register_codec(Codec("gzip", "application/gzip", gzip.compress, gzip.decompress))
register_codec(Codec("bzip2", "application/x-bz2", bz2.compress, bz2.decompress))
register_codec(Codec("lzma", "application/x-lzma", lzma.compress, lzma.decompress))
if (_module := _optional("zstandard")) is not None:
    register_codec(_zstd(_module))


#: Serializers and codecs that come with an extra of the same name.
_EXTRAS = ("yaml", "zstd")


def _lookup(table: dict[str, T], name: str, kind: str) -> T:
    try:
        return table[name]
    except KeyError:
        if name in _EXTRAS:
            raise ImproperlyConfigured(f"the {kind} {name!r} needs pip install 'conveyor[{name}]'") from None
        known = ", ".join(sorted(key for key in table if "/" not in key))
        raise ImproperlyConfigured(f"unknown {kind} {name!r} (known: {known})") from None


def serializer(name: str) -> Serializer:
    """Return the serializer registered under a name or content type."""
    return _lookup(_SERIALIZERS, name, "serializer")


def codec(name: str) -> Codec:
    """Return the compression codec registered under a name or content type."""
    return _lookup(_CODECS, name, "compression")


def accepted_content_types(accept: Iterable[str]) -> frozenset[str]:
    """Turn `accept_content` (names or content types) into a set of content types."""
    return frozenset(serializer(item).content_type for item in accept)


def dumps(value: Any, serializer_name: str, compression: str | None = None) -> tuple[bytes, str]:
    """Serialize (and compress) a value; return the bytes and their content type."""
    chosen = serializer(serializer_name)
    data = chosen.dumps(value)
    if compression:
        data = codec(compression).compress(data)
    return data, chosen.content_type


def loads(
    data: bytes,
    content_type: str,
    *,
    accept: frozenset[str] | None = None,
    compression: str | None = None,
) -> Any:
    """Decompress and deserialize, refusing content types outside `accept`."""
    if accept is not None and content_type not in accept:
        raise ContentDisallowed(
            f"refusing to deserialize content of type {content_type!r}: "
            f"it is not in accept_content ({', '.join(sorted(accept))})"
        )
    try:
        if compression:
            data = codec(compression).decompress(data)
        return serializer(content_type).loads(data)
    except ImproperlyConfigured as exc:
        raise DecodeError(str(exc)) from exc
    except Exception as exc:
        raise DecodeError(f"cannot decode {content_type} content: {exc}") from exc
