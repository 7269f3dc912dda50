"""The servers the outage tests stop are the session's own, and the check that guards the shared ones works."""

from __future__ import annotations

from urllib.parse import urlsplit

from tests.conftest import PG_ADMIN, REDIS_URL
from tests.faults.on_private_servers import _point_celery_at, celery_app, database_name, env, redis_db  # noqa: F401
from tests.private_services import server_identity


def _port(url: str) -> int:
    return urlsplit(url).port


def test_an_outage_module_runs_everything_on_the_private_servers(env, celery_app, private_postgres, private_redis):
    shared = {_port(PG_ADMIN), _port(REDIS_URL)}
    private = {private_postgres.port, private_redis.port}
    assert not shared & private
    used = {_port(env["DATABASE_URL"]), _port(env["CELERY_BROKER_URL"]), _port(env["CELERY_RESULT_BACKEND"]),
            _port(celery_app.conf.broker_url), _port(celery_app.conf.result_backend)}
    assert used == private, used
    assert _client_ports(celery_app) == (private_redis.port, private_redis.port)


def test_the_celery_client_drops_what_it_built_for_another_server(private_redis):
    """tasks.app caches its broker pool and result backend: moving it must not leave them on the old server."""
    import tasks

    before = (tasks.app.conf.broker_url, tasks.app.conf.result_backend)
    _point_celery_at(tasks.app, REDIS_URL, REDIS_URL)
    try:
        assert _client_ports(tasks.app) == (_port(REDIS_URL), _port(REDIS_URL))  # built for the shared one
        _point_celery_at(tasks.app, private_redis.url(), private_redis.url())
        assert _client_ports(tasks.app) == (private_redis.port, private_redis.port)
    finally:
        _point_celery_at(tasks.app, *before)


def _client_ports(app) -> tuple[int, int]:
    """Ports of the connection the app's pool hands out and of its result backend."""
    with app.pool.acquire(block=True) as conn:
        broker_port = conn.port
    return broker_port, app.backend.connparams["port"]


def test_the_identity_check_sees_a_restart(private_postgres, private_redis):
    """What `shared_servers_untouched` compares changes when a server restarts (shown on the private ones)."""
    before = server_identity(private_postgres.admin_url, private_redis.url())
    with private_postgres.down():
        pass
    private_redis.restart(persist=False, down_sec=0)
    after = server_identity(private_postgres.admin_url, private_redis.url())
    assert before["postgres started"] != after["postgres started"]
    assert before["redis run_id"] != after["redis run_id"]
