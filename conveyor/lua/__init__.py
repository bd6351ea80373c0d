"""Redis's server-side scripts: one file each, with a header naming its KEYS and ARGV.

A script's `-- uses:` line names the shared helpers (files of their own here, which may
name helpers of their own): each is put before it once, those it uses first.
"""

from __future__ import annotations

from importlib.resources import files


def _source(name: str) -> str:
    return (files(__package__) / f"{name}.lua").read_text()


def _uses(text: str) -> list[str]:
    return next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("-- uses:")), [])


def _helpers(name: str, seen: list[str]) -> list[str]:
    """The helpers `name` needs, each once, every helper after those it uses."""
    for helper in _uses(_source(name)):
        if helper not in seen:
            _helpers(helper, seen)
            seen.append(helper)
    return seen


def script(name: str) -> str:
    """The text of `name.lua`, its helpers first."""
    return "".join(_source(helper) for helper in _helpers(name, [])) + _source(name)
