"""The dashboard in a real browser: a page of another site cannot act through it.

Needs Chromium (`apt-get install chromium`); skipped, saying so, where it is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.processes import E2E, free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def rendered(url: str) -> str:
    """The page's DOM once headless Chromium has run its scripts."""
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")
def test_a_page_of_another_site_cannot_revoke_through_the_dashboard(e2e: E2E) -> None:
    """Even with actions allowed without authentication, a browser page from another origin that
    POSTs to the dashboard (as any site open in the same browser could) is refused."""
    e2e.write_app()
    port = free_port()
    e2e.start_worker(
        f"--port={port}", "--unauthenticated-api", name="dash", command=("flower", "-l", "info"),
        ready="Uvicorn running",
    )  # fmt: skip
    site = e2e.directory / "evil"
    site.mkdir()
    (site / "index.html").write_text(
        "<html><body><p id='done'>sending</p><script>"
        f"fetch('http://127.0.0.1:{port}/api/tasks/victim/revoke?terminate=1&signal=SIGKILL',"
        " {method: 'POST', mode: 'no-cors'})"
        ".then(() => document.getElementById('done').textContent = 'sent')"
        ".catch(() => document.getElementById('done').textContent = 'sent')"
        "</script></body></html>"
    )
    evil_port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(evil_port), "--bind", "127.0.0.1"],
        cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        page = rendered(f"http://127.0.0.1:{evil_port}/index.html")
    finally:
        server.terminate()
        server.wait(10)
    assert "sent" in page  # the browser did send it
    assert e2e.app.state.revoked(["victim"]) == {}
    # The same request from a script (no Origin) is allowed, as --unauthenticated-api says.
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks/other/revoke", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert set(e2e.app.state.revoked(["other"])) == {"other"}
