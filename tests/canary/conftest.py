"""Canary tests script their own /readyz and receive alerts on a local webhook."""

from tests.canary.fixtures import readyz, settings, webhook  # noqa: F401
