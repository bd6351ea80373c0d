"""Redis's server-side scripts: one file each, with a header naming its KEYS and ARGV.

A script's `-- uses:` line names the shared helpers (files of their own here)
put before it; `{NAME}` in a script is a constant filled in when it is loaded.
"""

from __future__ import annotations

from importlib.resources import files


def script(name: str, **constants: int) -> str:
    """The text of `name.lua`, its helpers first, its constants filled in."""
    text = (files(__package__) / f"{name}.lua").read_text()
    uses = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("-- uses:")), [])
    text = "".join(script(helper) for helper in uses) + text
    for key, value in constants.items():
        text = text.replace(f"{{{key}}}", str(value))
    return text
