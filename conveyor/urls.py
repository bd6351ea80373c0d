"""Service URLs as people see them: never with their password."""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(//[^:/@]*:)[^@/]*@")


def redacted(url: str) -> str:
    """A URL fit for logs and screens: its password replaced by `***`."""
    return _PASSWORD.sub(r"\1***@", url)
