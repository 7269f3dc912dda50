"""GET /metrics: parsed with prometheus_client's own parser, its values agree with `list --json` and
with the journals, standby record and canary records on disk; readable from allowlisted addresses or
with the API token only."""

from __future__ import annotations

import json
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from rollback.drill import run_drill
from rollback.ids import new_txn_id
from rollback.journal import Journal, TxnStatus
from rollback.snapshot import create_snapshot
from rollback.standby import prepare_standby
from tests.conftest import cli

OUTSIDE = {"REMOTE_ADDR": "203.0.113.9"}


def _samples(text: str) -> dict:
    """{(sample name, frozenset(labels)): value} from the exposition text."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _journal(settings, status: TxnStatus | None, requested_by: str, auto: bool = False,
             steps: tuple[str, ...] = ()) -> dict:
    journal = Journal(settings.backup_dir)
    txn = new_txn_id()
    doc = journal.create(txn, snapshot_id="x", reason="test", auto=auto, requested_by=requested_by)
    for step in steps:
        journal.step_started(txn, step)
        time.sleep(0.01)
        doc = journal.step_finished(txn, step, "ok")
    if status is not None:
        doc = journal.finish(txn, status, error="boom" if status is TxnStatus.FAILED else None)
    time.sleep(0.01)  # distinct finished_ts
    return doc


def _canary(settings, deploy_id: str, status: str | None) -> None:
    folder = settings.backup_dir / "canary"
    folder.mkdir(exist_ok=True)
    verdict = {"deploy_id": deploy_id, "status": status} if status else None
    (folder / f"{deploy_id}.json").write_text(json.dumps({"deploy_id": deploy_id, "phase": "done", "verdict": verdict}))


def test_metrics_agree_with_list_json_and_the_records_on_disk(settings, env, client):
    first = create_snapshot(settings, notes="one")
    newest = create_snapshot(settings, notes="two")
    drill = run_drill(settings, newest["id"])
    prepare_standby(settings, newest["id"])
    _journal(settings, TxnStatus.SUCCEEDED, "cli")
    _journal(settings, TxnStatus.FAILED, "console:ops")
    _journal(settings, TxnStatus.SUCCEEDED, "api@127.0.0.1")
    _journal(settings, TxnStatus.SUCCEEDED_WITH_WARNINGS, "canary", auto=True)
    last = _journal(settings, TxnStatus.SUCCEEDED, "api@127.0.0.1",
                    steps=("preflight", "db", "data", "code", "readyz"))
    _journal(settings, None, "cli")  # in progress
    _canary(settings, "deploy-1", "ready")
    _canary(settings, "deploy-2", "rolled_back")
    _canary(settings, "deploy-3", "ready")
    _canary(settings, "deploy-4", None)  # still watching: no verdict yet

    resp = client.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.mimetype == "text/plain"
    samples = _samples(resp.text)
    listed = json.loads(cli(env, "list", "--json").stdout)
    assert [e["id"] for e in listed] == [newest["id"], first["id"]]

    now = time.time()
    assert _value(samples, "rollback_snapshots", location="local") == len(listed)
    assert _value(samples, "rollback_snapshot_bytes", location="local") == \
        sum(a["size"] for e in listed for a in e["artifacts"].values())
    assert _value(samples, "rollback_snapshot_newest_age_seconds") == pytest.approx(now - _ts(listed[0]["completed_at"]), abs=5)
    assert _value(samples, "rollback_snapshot_last_duration_seconds") == \
        _ts(listed[0]["completed_at"]) - _ts(listed[0]["created_at"])
    assert _value(samples, "rollback_standby_ready") == 1
    assert 0 <= _value(samples, "rollback_standby_age_seconds") < 60
    assert listed[0]["drill"]["ok"] is True and "drill" not in listed[1]
    assert _value(samples, "rollback_drill_last_ok") == 1
    assert _value(samples, "rollback_drill_last_rto_seconds") == listed[0]["drill"]["rto_sec"] == drill["rto_sec"]
    assert _value(samples, "rollback_drill_last_age_seconds") == pytest.approx(now - _ts(listed[0]["drill"]["at"]), abs=5)
    assert _value(samples, "rollback_snapshots_proven") == 1

    assert _value(samples, "rollback_restores_total", outcome="succeeded", trigger="manual") == 1
    assert _value(samples, "rollback_restores_total", outcome="failed", trigger="console") == 1
    assert _value(samples, "rollback_restores_total", outcome="succeeded", trigger="api") == 2
    assert _value(samples, "rollback_restores_total", outcome="succeeded_with_warnings", trigger="canary") == 1
    assert sum(v for (n, _), v in samples.items() if n == "rollback_restores_total") == 5
    assert _value(samples, "rollback_restores_in_progress") == 1
    for step, recorded in last["steps"].items():
        assert recorded["duration_sec"] > 0
        assert _value(samples, "rollback_restore_last_duration_seconds", step=step) == recorded["duration_sec"]
    assert _value(samples, "rollback_restore_last_ok") == 1
    assert _value(samples, "rollback_restore_last_timestamp_seconds") == pytest.approx(last["finished_ts"])

    assert _value(samples, "rollback_canary_verdicts_total", outcome="ready") == 2
    assert _value(samples, "rollback_canary_verdicts_total", outcome="rolled_back") == 1
    assert sum(v for (n, _), v in samples.items() if n == "rollback_canary_verdicts_total") == 3
    assert _value(samples, "rollback_backup_dir_free_bytes") == \
        pytest.approx(shutil.disk_usage(settings.backup_dir).free, rel=0.05)
    assert _value(samples, "rollback_manifest_readable") == 1
    _alert_rules_name_only_exposed_metrics({name for name, _ in samples})


def _alert_rules_name_only_exposed_metrics(exposed: set[str]) -> None:
    """docs/monitoring.md's alert rules are valid YAML and every metric they use is exposed."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    rules = yaml.safe_load(re.search(r"```yaml\n(groups:.*?)```", text, re.S).group(1))
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    assert len(exprs) >= 8
    used = {name for expr in exprs for name in re.findall(r"\b(rollback_[a-z_]+)", expr)}
    assert used - exposed == set()
    assert {"rollback_snapshot_newest_age_seconds", "rollback_standby_ready", "rollback_drill_last_ok",
            "rollback_backup_dir_free_bytes", "rollback_restore_last_ok"} <= used


def test_a_failed_drill_and_a_stale_standby_show(settings, client, make_app):
    entry = create_snapshot(settings)
    prepare_standby(settings, entry["id"])
    create_snapshot(settings)  # the standby is now of an older snapshot
    with settings.data_base_dir.joinpath("users.json").open("w") as f:
        f.write("{not json")
    bad = create_snapshot(settings)
    result = run_drill(settings, bad["id"])
    assert not result["ok"] and "users_file" in result["error"]
    samples = _samples(client.get("/metrics").text)
    assert _value(samples, "rollback_standby_ready") == 0
    assert _value(samples, "rollback_drill_last_ok") == 0
    assert ("rollback_drill_last_rto_seconds", frozenset()) not in samples  # no RTO for a failed drill
    off = _samples(make_app(settings.with_overrides(standby_enabled=False)).test_client().get("/metrics").text)
    assert ("rollback_standby_ready", frozenset()) not in off  # ROLLBACK_STANDBY=false: nothing to alert on


def test_metrics_access(make_app, api_headers):
    client = make_app().test_client()
    assert client.get("/metrics").status_code == 200  # loopback is allowlisted by default
    refused = client.get("/metrics", environ_base=OUTSIDE)
    assert refused.status_code == 403 and "ALLOW_ADMIN_ROLLBACK_IPS" in refused.text
    # A forged X-Forwarded-For is not believed (TRUSTED_PROXY_HOPS=0).
    assert client.get("/metrics", environ_base=OUTSIDE, headers={"X-Forwarded-For": "127.0.0.1"}).status_code == 403
    assert client.get("/metrics", environ_base=OUTSIDE, headers={"Authorization": "Bearer wrong"}).status_code == 401
    allowed = client.get("/metrics", environ_base=OUTSIDE, headers=api_headers)
    assert allowed.status_code == 200
    assert any(f.name == "rollback_snapshots" for f in text_string_to_metric_families(allowed.text))
    # An address outside the list, without a token, with no API token configured: still refused.
    no_token = make_app(ROLLBACK_API_TOKEN=None).test_client()
    assert no_token.get("/metrics", environ_base=OUTSIDE, headers=api_headers).status_code == 401


def test_remote_copies_counted_from_their_states_on_disk(settings, env, make_app):
    """With BACKUP_REMOTE_URL, `location="remote"` counts the snapshots whose off-site copy the last
    upload confirmed (BACKUP_DIR/.remote states), as `list --json` shows them; no bucket is asked."""
    from rollback.remote import state as remote_state

    remote = settings.with_overrides(remote_url="s3://drill-metrics/prefix")
    uploaded, _pending, failed = (create_snapshot(settings) for _ in range(3))
    remote_state.write_state(remote, uploaded["id"], remote_state.OK, at="2026-12-04T00:00:00Z", url="s3://x")
    remote_state.write_state(remote, failed["id"], remote_state.FAILED, error="boom", attempt=1, final=False)
    samples = _samples(make_app(remote).test_client().get("/metrics").text)
    listed = json.loads(cli(dict(env, BACKUP_REMOTE_URL=remote.remote_url), "list", "--json").stdout)
    confirmed = [e for e in listed if e["remote"]["state"] == "ok"]
    assert [e["id"] for e in confirmed] == [uploaded["id"]]
    assert _value(samples, "rollback_snapshots", location="remote") == len(confirmed) == 1
    assert _value(samples, "rollback_snapshot_bytes", location="remote") == \
        sum(a["size"] for a in uploaded["artifacts"].values())
    assert _value(samples, "rollback_snapshots", location="local") == len(listed) == 3
    # Without BACKUP_REMOTE_URL there is no remote series at all.
    plain = _samples(make_app().test_client().get("/metrics").text)
    assert ("rollback_snapshots", frozenset({("location", "remote")})) not in plain
