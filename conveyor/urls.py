"""Service URLs as people see them: never with their password."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from conveyor.exceptions import ImproperlyConfigured

_PASSWORD = re.compile(r"(//[^:/@]*:)[^@/]*@")


def redacted(url: str) -> str:
    """A URL fit for logs and screens: its password replaced by `***`."""
    return _PASSWORD.sub(r"\1***@", url)


def checked(url: str, setting: str) -> str:
    """`url` if its parts parse; else ImproperlyConfigured naming the setting (the URL redacted)."""
    try:
        urlsplit(url).port  # noqa: B018 - parsing it is the check
    except ValueError as exc:
        raise ImproperlyConfigured(f"{setting} {redacted(url)!r}: {exc}") from None
    return url
