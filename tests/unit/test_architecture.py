"""The package's shape: no import cycles, small interfaces, a worker that is its loop, and
optional parts that stay optional."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import grimp

import conveyor.worker.worker
from conveyor.backends.base import ResultBackend
from conveyor.brokers.base import Transport
from conveyor.brokers.state import StateStore


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), found iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return found


def test_no_module_imports_a_module_that_imports_it_back() -> None:
    graph = grimp.build_graph("conveyor", include_external_packages=False, exclude_type_checking_imports=True)
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for module in ("p.a", "p.b", "p.c"):
        graph.add_module(module)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.c")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_a_transport_and_a_state_store_each_ask_fewer_than_twelve_methods() -> None:
    """What a new broker must write; the rest have defaults (confirm, qos, interrupt, close...)."""
    assert len(Transport.__abstractmethods__) < 12, sorted(Transport.__abstractmethods__)
    assert len(StateStore.__abstractmethods__) < 12, sorted(StateStore.__abstractmethods__)
    assert {"publish", "fetch", "ack", "requeue", "renew", "dead_letter", "purge"} <= Transport.__abstractmethods__
    assert not Transport.__abstractmethods__ & StateStore.__abstractmethods__
    assert ResultBackend.__abstractmethods__  # the third interface, held to its own contract suite


def test_the_worker_module_is_its_loop_in_under_400_lines() -> None:
    """Features live in hook modules (an import contract keeps worker.py from importing them)."""
    source = Path(conveyor.worker.worker.__file__).read_text()
    assert len(source.splitlines()) < 400


def _run(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=60
    )


OPTIONAL = ("redis", "aiormq", "starlette", "uvicorn", "prometheus_client", "sqlalchemy", "django", "yaml")


def test_a_producer_and_worker_on_sqlite_import_no_optional_extra(tmp_path: Path) -> None:
    done = _run(
        f"""
        import sys, threading
        from conveyor import Celery
        from conveyor.worker import Worker

        app = Celery("t", broker="sqlite:///{tmp_path}/q.db")

        @app.task
        def add(x, y):
            return x + y

        result = add.delay(1, 2)
        worker = Worker(app, pool="solo")
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            assert result.get(timeout=20) == 3
        finally:
            worker.stop()
            thread.join(20)
        print(",".join(name for name in {OPTIONAL!r} if name in sys.modules))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def test_a_url_whose_extra_is_missing_names_the_install_line() -> None:
    done = _run(
        """
        import sys
        sys.modules["redis"] = None  # as if conveyor[redis] were not installed
        from conveyor import Celery
        from conveyor.exceptions import ImproperlyConfigured
        try:
            Celery("t", broker="redis://127.0.0.1:6379/0").broker
        except ImproperlyConfigured as exc:
            print(exc)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "the Redis broker needs redis: pip install 'conveyor[redis]'" in done.stdout


def test_the_dashboard_without_its_extra_is_one_error_line() -> None:
    done = _run(
        """
        import sys
        sys.modules["starlette"] = None
        from conveyor.cli import main
        main()
        """,
        "flower",
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "Error: conveyor flower needs starlette: pip install 'conveyor[dashboard]'"
    ]
