"""Fixtures that move a test module onto the session's private Postgres and Redis.

A module whose tests stop or restart a server imports them, which overrides the shared ones for that module
only:

    from tests.faults.on_private_servers import celery_app, database_name, env, redis_db  # noqa: F401

Then everything of its tests runs on the private servers: the test database (`DATABASE_URL`, and so the
settings, the CLI and the workers), the broker and result backend of the worker processes and of the test's
own Celery client (`tasks.app`).
"""

from __future__ import annotations

import secrets

import pytest


@pytest.fixture
def database_name(private_postgres):
    """A fresh, empty database on the private Postgres; it and its restore copies are dropped afterwards."""
    name = f"rbtest_{secrets.token_hex(4)}"
    private_postgres.create_database(name)
    yield name
    private_postgres.drop_databases(name)


@pytest.fixture
def env(env, database_name, private_postgres, private_redis):
    """The shared fixture's env with the database and Celery URLs of the private servers."""
    return dict(env, DATABASE_URL=private_postgres.url(database_name),
                CELERY_BROKER_URL=private_redis.url(), CELERY_RESULT_BACKEND=private_redis.url())


@pytest.fixture
def redis_db(private_redis):
    client = private_redis.client()
    client.flushdb()
    yield client
    private_redis.ensure_up()
    client.flushdb()


@pytest.fixture
def celery_app(redis_db, private_redis):
    """tasks.app pointed at the private Redis for this test, then back where it was."""
    import tasks

    before = (tasks.app.conf.broker_url, tasks.app.conf.result_backend)
    _point_celery_at(tasks.app, private_redis.url(), private_redis.url())
    try:
        yield tasks.app
    finally:
        _point_celery_at(tasks.app, *before)


def _point_celery_at(app, broker_url: str, backend_url: str) -> None:
    """Change the URLs and drop what the app built for the old ones (its connection pool and result
    backend are cached; a changed conf alone would leave them talking to the old server)."""
    app.conf.update(broker_url=broker_url, result_backend=backend_url)
    app._pool = None  # kombu keeps the pool of each URL: the old one is found again when we point back
    amqp = vars(app).get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    app._backend_cache = None
    vars(app._local).pop("backend", None)
