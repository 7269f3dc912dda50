"""End to end in real headless Chromium: log in, open the list, restore the previous snapshot through the
two-step confirmation, watch the progress page reach success, and check the state is back.

The app is served by werkzeug over real HTTP and the restore runs in a real `celery -A tasks worker`
subprocess. The screenshots in docs/img/ come from this test: `UPDATE_SCREENSHOTS=1 python -m pytest
tests/web/test_browser.py` rewrites them; otherwise they go to the test's temp dir, so a test run never
changes the checkout.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from rollback.snapshot import create_snapshot
from tests import state
from tests.web.conftest import ADMIN_PASSWORD, ADMIN_USER

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is not installed")]


@pytest.fixture
def served(app):
    """The console app on a real HTTP server in a thread; yields its base URL."""
    from werkzeug.serving import make_server

    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()
    thread.join(5)


@pytest.fixture
def page():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1360, "height": 760})
        try:
            yield context.new_page()
        finally:
            context.close()
            browser.close()


@pytest.fixture
def shot(page, tmp_path):
    folder = DOCS_IMG if os.environ.get("UPDATE_SCREENSHOTS") == "1" else tmp_path / "img"
    folder.mkdir(parents=True, exist_ok=True)

    def take(name: str) -> Path:
        path = folder / name
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size < 300_000
        return path

    return take


def test_restore_the_previous_snapshot_in_a_browser(settings, worker_process, served, page, shot):
    create_snapshot(settings, notes="release 1.4.1")
    before = state.capture(settings)
    previous = create_snapshot(settings, notes="before deploy 1.4.2")
    state.bad_deploy(settings, settings.app_repo_dir)
    worker_process()

    page.goto(f"{served}/admin/rollback/")
    page.fill("#username", ADMIN_USER)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#snapshots")
    assert page.locator("#snapshots tbody tr").first.get_attribute("data-snapshot") == previous["id"]
    shot("rollback-list.png")

    page.click("#restore-previous")
    page.wait_for_selector("#restore-form")
    assert previous["id"] in page.inner_text("h4") and "0003_bad_deploy" in page.inner_text("#plan")
    page.fill("#reason", "bad deploy 1.4.2: 500s on /trips")
    page.check("#confirm")
    shot("rollback-confirm.png")

    page.click("#execute-restore")
    page.wait_for_selector("#progress")
    page.wait_for_selector('#progress[data-final="true"]', timeout=120_000)
    assert page.get_attribute("#progress", "data-status") == "succeeded", page.inner_text("#outcome")
    assert "Restore succeeded" in page.inner_text("#outcome")
    assert page.locator("#steps .badge-success").count() == 5
    # Let the bar's CSS transition finish before the picture.
    page.wait_for_function("(b => b.offsetWidth >= b.parentElement.clientWidth - 1)(document.getElementById('bar'))")
    shot("rollback-progress.png")

    assert state.capture(settings) == before
    page.goto(f"{served}/admin/rollback/history/")
    assert "bad deploy 1.4.2" in page.inner_text("#history") and "succeeded" in page.inner_text("#history")
