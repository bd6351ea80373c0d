"""The dashboard's pages at Flower's URLs, in real headless Chromium driven by Playwright, against
real worker processes on Redis.

Chromium is the system's (`apt-get install chromium`), launched through `executable_path`.
Each test saves screenshots of the pages it visits in `build/screenshots/`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import E2E, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots"
CREDENTIALS = {"username": "admin", "password": "s3cret-pw"}


@pytest.fixture
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        reason = "no Chromium on this machine (apt-get install chromium)"
        if os.environ.get("CONVEYOR_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (CONVEYOR_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield chromium
        chromium.close()


def start_dashboard(e2e: E2E, *args: str) -> str:
    port = free_port()
    e2e.start_worker(f"--port={port}", *args, name="dash", command=("flower", "-l", "info"), ready="Uvicorn running")
    return f"http://127.0.0.1:{port}"


def shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def fleet(e2e: E2E, redis_store: tuple[str, dict[str, str]]) -> E2E:
    """An app on Redis and one threads worker with events on."""
    url, options = redis_store
    e2e.write_app(broker=url, options=options, worker_send_task_events=True, result_extended=True)
    e2e.start_worker("-P", "threads", "-c", "2", name="painter")
    return e2e


def test_every_page_loads_with_data_from_a_real_worker(fleet: E2E, browser: Any) -> None:
    add = fleet.app.tasks["e2e.add"]
    done = [add.delay(i, i) for i in range(12)]
    assert [r.get(timeout=20) for r in done] == [2 * i for i in range(12)]
    failed = add.delay("x", None)
    with pytest.raises(TypeError):
        failed.get(timeout=20)
    fleet.app.tasks["e2e.add"].apply_async((1, 1), queue="later", countdown=300)  # delayed
    fleet.app.tasks["e2e.add"].apply_async((1, 1), queue="backlog")  # ready, and no worker takes it
    base = start_dashboard(fleet, "--basic-auth", "admin:s3cret-pw")
    page = browser.new_page(http_credentials=CREDENTIALS)

    page.goto(f"{base}/")
    page.wait_for_selector('tr[data-worker="painter@e2e"]')
    assert page.text_content("#online") == "1"
    shot(page, "workers")

    page.click("text=painter@e2e")
    page.wait_for_selector("#registered td:text('e2e.add')")
    assert "threads \u00d7 2" in page.text_content("#pool")
    assert "celery" in page.text_content("#queues")
    shot(page, "worker")

    page.goto(f"{base}/tasks")
    page.wait_for_selector(f'tr[data-id="{failed.id}"]')
    assert page.locator("#tasks tr[data-id]").count() == 13
    shot(page, "tasks")

    page.click(f"a:text('{failed.id}')")
    page.wait_for_selector("#traceback pre")
    assert page.text_content("#state") == "FAILURE"
    assert "TypeError" in page.text_content("#traceback")
    assert "'x'" in page.text_content("#details")
    shot(page, "task")

    page.goto(f"{base}/broker")
    page.wait_for_selector('tr[data-queue="later"]')
    assert page.text_content('tr[data-queue="later"] td:nth-child(2)') == "1"
    assert page.text_content('tr[data-queue="later"] td:nth-child(3)') == "\u2014"  # none ready
    page.wait_for_function(  # dated by the queue's id counter, read as the dashboard samples
        "document.querySelector('tr[data-queue=\"backlog\"] td:nth-child(3)').textContent.endsWith(' s')",
        timeout=15_000,
    )
    shot(page, "broker")

    page.goto(f"{base}/overview")
    page.wait_for_selector("#workers td:text('painter@e2e')")
    shot(page, "overview")


def test_filters_search_sorting_and_pages_narrow_the_task_list(fleet: E2E, browser: Any) -> None:
    add, size = fleet.app.tasks["e2e.add"], fleet.app.tasks["e2e.size"]
    results = [add.delay(i, 1) for i in range(30)] + [size.delay("abc"), size.delay("needle-in-args")]
    failing = [add.delay("x", None) for _ in range(3)]
    for result in results + failing:
        result.get(timeout=20, propagate=False)
    base = start_dashboard(fleet)
    page = browser.new_page()
    page.goto(f"{base}/tasks")
    page.wait_for_function("document.querySelectorAll('#tasks tr[data-id]').length === 35")

    page.select_option("#limit", "25")
    page.wait_for_function("document.querySelectorAll('#tasks tr[data-id]').length === 25")
    assert page.text_content("#showing") == "1\u201325 of 35"
    page.click("#next")
    page.wait_for_function("document.getElementById('showing').textContent === '26\u201335 of 35'")
    assert page.locator("#tasks tr[data-id]").count() == 10

    page.select_option("#state", "FAILURE")
    page.wait_for_function("document.querySelectorAll('#tasks tr[data-id]').length === 3")
    shown = page.eval_on_selector_all("#tasks tr[data-id]", "rows => rows.map((row) => row.dataset.id)")
    assert set(shown) == {r.id for r in failing}
    page.select_option("#state", "")
    page.select_option("#taskname", "e2e.size")
    page.wait_for_function("document.querySelectorAll('#tasks tr[data-id]').length === 2")
    page.fill("#search", "needle")
    page.wait_for_function("document.querySelectorAll('#tasks tr[data-id]').length === 1")
    assert page.get_attribute("#tasks tr[data-id]", "data-id") == results[-1].id
    # A link to this view: the address follows the search once its typing pause ends (a live
    # update in between may narrow the list first, from the box as it stands).
    page.wait_for_function("location.search.includes('search=needle')")
    assert "taskname=e2e.size" in page.url and "search=needle" in page.url

    page.fill("#search", "")
    page.select_option("#taskname", "")
    page.click("th[data-sort='runtime']")  # slowest first
    page.wait_for_selector("th.sorted-desc[data-sort='runtime']")
    page.wait_for_function("document.querySelectorAll('#tasks tr[data-id]').length === 25")
    shot(page, "tasks-sorted")


def test_the_task_list_updates_live_without_reloading(fleet: E2E, browser: Any) -> None:
    base = start_dashboard(fleet)
    page = browser.new_page()
    page.goto(f"{base}/tasks")
    page.wait_for_selector("#status.live")
    page.evaluate("window.loadedOnce = true")
    result = fleet.app.tasks["e2e.add"].delay(20, 22)
    assert result.get(timeout=20) == 42
    page.wait_for_selector(f'tr[data-id="{result.id}"]', timeout=15_000)
    assert page.evaluate("window.loadedOnce") is True  # the same page, not a reload


def test_revoke_and_pool_grow_from_the_pages_take_effect(fleet: E2E, browser: Any) -> None:
    waiting = fleet.app.tasks["e2e.add"].apply_async((1, 2), countdown=300)
    base = start_dashboard(fleet, "--basic-auth", "admin:s3cret-pw")
    page = browser.new_page(http_credentials=CREDENTIALS)
    page.on("dialog", lambda dialog: dialog.accept())

    page.goto(f"{base}/task/{waiting.id}")
    page.wait_for_selector("#revoke:not([disabled])")
    page.click("#revoke")
    page.wait_for_selector("#toast.shown")
    assert page.text_content("#toast") == f"Revoked '{waiting.id}'"
    assert set(fleet.app.state.revoked([waiting.id])) == {waiting.id}

    page.goto(f"{base}/worker/painter@e2e")
    page.wait_for_selector("#pool dd")
    page.click("#grow")
    page.wait_for_function("document.getElementById('pool').textContent.includes('threads \u00d7 3')", timeout=15_000)
    replies = fleet.app.control.inspect(["painter@e2e"]).stats()
    assert replies["painter@e2e"]["pool"]["max-concurrency"] == 3


def test_actions_without_credentials_are_refused_and_basic_auth_is_enforced(fleet: E2E, browser: Any) -> None:
    base = start_dashboard(fleet, "--basic-auth", "admin:s3cret-pw")
    # (Chromium ends a navigation answered 401 with an error of its own: the browser's requests tell.)
    anonymous = browser.new_context().request
    assert anonymous.get(f"{base}/workers").status == 401
    assert anonymous.post(f"{base}/api/worker/pool/grow/painter@e2e").status == 401
    wrong = browser.new_context(http_credentials={"username": "admin", "password": "nope"}).request
    assert wrong.get(f"{base}/tasks").status == 401
    right = browser.new_context(http_credentials=CREDENTIALS).request
    assert right.get(f"{base}/tasks").status == 200

    read_only = start_dashboard(fleet)  # no credentials set: pages read, actions refused
    page = browser.new_page()
    page.goto(f"{read_only}/worker/painter@e2e")
    page.wait_for_selector("#pool dd")
    page.click("#grow")
    page.wait_for_selector("#toast.error")
    assert page.text_content("#toast").startswith("403")


def test_a_dashboard_started_later_lists_tasks_that_ran_before_it_without_events(
    e2e: E2E, redis_store: tuple[str, dict[str, str]], browser: Any
) -> None:
    url, options = redis_store
    e2e.write_app(broker=url, options=options, worker_send_task_events=False)
    e2e.start_worker("-P", "threads", name="quiet")
    results = [e2e.app.tasks["e2e.add"].delay(i, 100) for i in range(5)]
    assert [r.get(timeout=20) for r in results] == [i + 100 for i in range(5)]
    time.sleep(0.2)
    base = start_dashboard(e2e)
    page = browser.new_page()
    page.goto(f"{base}/tasks")
    page.wait_for_function("document.querySelectorAll('#tasks tr[data-id]').length === 5")
    row = page.text_content(f'tr[data-id="{results[0].id}"]')
    assert "e2e.add" in row and "SUCCESS" in row and "quiet@e2e" in row and "100" in row
