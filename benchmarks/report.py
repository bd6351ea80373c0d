"""Print a benchmark's table, and keep its copy in docs/benchmarks.md current.

Each table has a key; `--markdown docs/benchmarks.md` replaces the text between
`<!-- bench:KEY -->` and `<!-- /bench:KEY -->` in that page (or appends the
section when the page has none), so the page shows what the command last printed.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table


def show(key: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]], markdown: Path | None) -> None:
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if markdown is not None:
        write(markdown, key, title, columns, rows)


def as_markdown(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"**{title}** ({machine}, {time.strftime('%Y-%m-%d')})",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write(path: Path, key: str, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{as_markdown(title, columns, rows)}\n{end}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + f"\n\n{block}\n"
    path.write_text(text)
