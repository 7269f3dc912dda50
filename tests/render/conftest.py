"""Fixtures for the Render code strategy and deployment: a local fake of Render's API, plus the
canary tests' scripted /readyz (which `settings` points at)."""

from __future__ import annotations

import pytest

from tests.canary.fixtures import readyz, settings, webhook  # noqa: F401
from tests.render.fake_render import FakeRender


@pytest.fixture
def fake_render():
    fake = FakeRender().start()
    yield fake
    fake.stop()
