"""Fixtures shared by the canary, e2e and render tests (imported into their conftest.py files)."""

from __future__ import annotations

import pytest

from tests.canary.servers import ScriptedReadyz, WebhookReceiver, app_settings


@pytest.fixture
def readyz():
    server = ScriptedReadyz("ok")
    yield server
    server.stop()


@pytest.fixture
def webhook():
    server = WebhookReceiver()
    yield server
    server.stop()


@pytest.fixture
def settings(env, readyz):
    """Overrides tests/conftest.py's: the same migrated app database, judged by a scripted /readyz
    (these tests decide what /readyz answers; the web app's own checks are tested in tests/web)."""
    return app_settings(env, readyz.url)
