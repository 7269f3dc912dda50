"""GET /metrics: the service's state in the Prometheus text format, for alerting (docs/monitoring.md).

Produced by prometheus_client's own exposition from a custom collector that reads, at every scrape,
what is on disk: the manifest (snapshots, their drills), the restore journals, the warm standby's
record, the canary records and the remote-copy states. So the values survive restarts of any process,
every web worker answers the same, and they agree with `python -m manage.rollback list --json`.

Readable without login from the allowlisted addresses (ALLOW_ADMIN_ROLLBACK_IPS), or from anywhere with
the API token (`Authorization: Bearer $ROLLBACK_API_TOKEN`), so a hosted Prometheus can scrape it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import datetime
from typing import Iterator

from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rollback import standby
from rollback.errors import RollbackError
from rollback.journal import FINAL_STATES, RESTORE_STEPS, Journal
from rollback.manifest import Manifest
from rollback.remote import state as remote_state
from rollback.settings import Settings

from .access import address_allowed, bearer_token_valid, client_address
from .context import WebContext

PREFIX = "rollback"
TRIGGERS = ("manual", "api", "console", "canary")


def register_metrics(app: Flask, ctx: WebContext) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(ctx.settings))

    @app.get("/metrics")
    def metrics():
        header = request.headers.get("Authorization")
        if not address_allowed(ctx.config, client_address()) and not bearer_token_valid(ctx.config, header):
            status = 401 if header else 403
            return Response(f"/metrics: address {client_address()} is not allowed (ALLOW_ADMIN_ROLLBACK_IPS) and "
                            f"no valid API token was sent\n", status=status, mimetype="text/plain")
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST,
                        headers={"Cache-Control": "no-store"})


def _ts(iso: str | None) -> float | None:
    """Epoch seconds of a stored UTC ISO-8601 time ('2026-12-04T20:36:41Z'); None when absent or bad."""
    try:
        return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp() if iso else None
    except ValueError:
        return None


def trigger_of(doc: dict) -> str:
    """manual (CLI, the manager), api, console or canary, from the journal's requested_by/auto."""
    by = str(doc.get("requested_by") or "")
    if by.startswith("canary") or doc.get("auto"):
        return "canary"
    if by.startswith("api"):
        return "api"
    if by.startswith("console"):
        return "console"
    return "manual"


def _gauge(name: str, doc: str, value: float | None, unit: str = "") -> Iterator[Metric]:
    """A one-sample gauge, left out when the value is unknown (alert on absent(), not on a made-up 0)."""
    if value is not None:
        g = GaugeMetricFamily(f"{PREFIX}_{name}", doc, unit=unit)
        g.add_metric([], float(value))
        yield g


class StateCollector:
    """Reads the state files at every collect(); nothing is cached in the process."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        try:
            entries = Manifest.for_settings(self.settings).entries()
            readable = 1
        except RollbackError:
            entries, readable = [], 0
        yield from _gauge("manifest_readable", "1 when manifest.json parses (and its HMAC checks), else 0", readable)
        yield from self._snapshots(entries, now)
        yield from self._standby(entries, now)
        yield from self._drills(entries, now)
        yield from self._restores(now)
        yield from self._canary()
        try:
            free = shutil.disk_usage(self.settings.backup_dir).free
        except OSError:
            free = None
        yield from _gauge("backup_dir_free_bytes", "Free bytes on the filesystem of BACKUP_DIR", free)

    def _snapshots(self, entries: list[dict], now: float) -> Iterator[Metric]:
        newest = entries[-1] if entries else None
        count = GaugeMetricFamily(f"{PREFIX}_snapshots", "Snapshots recorded, by location", labels=["location"])
        size = GaugeMetricFamily(f"{PREFIX}_snapshot_bytes", "Bytes of the snapshots' artifacts, by location",
                                 labels=["location"])
        count.add_metric(["local"], len(entries))
        size.add_metric(["local"], sum(a["size"] for e in entries for a in e["artifacts"].values()))
        if self.settings.remote_url:
            # The remote-copy states on disk (BACKUP_DIR/.remote): what the last uploads confirmed.
            uploaded = [e for e in entries if remote_state.read_state(self.settings, e["id"]).get("state") == remote_state.OK]
            count.add_metric(["remote"], len(uploaded))
            size.add_metric(["remote"], sum(a["size"] for e in uploaded for a in e["artifacts"].values()))
        yield count
        yield size
        if newest:
            done = _ts(newest.get("completed_at"))
            yield from _gauge("snapshot_newest_age_seconds", "Seconds since the newest snapshot completed",
                              None if done is None else max(now - done, 0.0))
            yield from _gauge("snapshot_newest_timestamp_seconds", "When the newest snapshot completed (epoch)", done)
            start = _ts(newest.get("created_at"))
            yield from _gauge("snapshot_last_duration_seconds", "How long the newest snapshot took",
                              None if done is None or start is None else max(done - start, 0.0))

    def _standby(self, entries: list[dict], now: float) -> Iterator[Metric]:
        if not self.settings.standby_enabled:  # ROLLBACK_STANDBY=false: nothing to be ready, nothing to alert on
            return
        record = standby.read_record(self.settings) or {}
        newest_id = entries[-1]["id"] if entries else None
        ready = bool(record) and record.get("snapshot_id") == newest_id and \
            bool(record.get("tree")) and os.path.isdir(record["tree"])
        yield from _gauge("standby_ready", "1 when the warm standby of the newest snapshot is prepared, else 0",
                          int(ready))
        prepared = _ts(record.get("prepared_at"))
        yield from _gauge("standby_age_seconds", "Seconds since the warm standby was prepared",
                          None if prepared is None else max(now - prepared, 0.0))

    def _drills(self, entries: list[dict], now: float) -> Iterator[Metric]:
        drills = [e["drill"] for e in entries if isinstance(e.get("drill"), dict) and _ts(e["drill"].get("at"))]
        if not drills:
            return
        last = max(drills, key=lambda d: _ts(d["at"]))
        yield from _gauge("drill_last_ok", "1 when the last restore drill passed, else 0", int(bool(last.get("ok"))))
        yield from _gauge("drill_last_rto_seconds", "Recovery time measured by the last drill (absent when it "
                                                    "failed)", last.get("rto_sec") if last.get("ok") else None)
        yield from _gauge("drill_last_age_seconds", "Seconds since the last restore drill", max(now - _ts(last["at"]), 0.0))
        proven = sum(1 for e in entries if (e.get("drill") or {}).get("ok"))
        yield from _gauge("snapshots_proven", "Snapshots whose last drill passed", proven)

    def _restores(self, now: float) -> Iterator[Metric]:
        docs = Journal(self.settings.backup_dir).all()
        total = CounterMetricFamily(f"{PREFIX}_restores", "Finished restores kept in the journals, by outcome and "
                                                          "trigger", labels=["outcome", "trigger"])
        counts: dict[tuple[str, str], int] = {}
        for doc in docs:
            if doc.get("status") in FINAL_STATES:
                key = (str(doc["status"]), trigger_of(doc))
                counts[key] = counts.get(key, 0) + 1
        for (outcome, trigger), n in sorted(counts.items()):
            total.add_metric([outcome, trigger], n)
        yield total
        yield from _gauge("restores_in_progress", "Restore transactions whose journal is not finished",
                          sum(1 for d in docs if d.get("status") not in FINAL_STATES))
        finished = [d for d in docs if d.get("status") in FINAL_STATES]
        if not finished:
            return
        last = max(finished, key=lambda d: (d.get("finished_ts") or _ts(d.get("finished_at")) or 0, d["txn"]))
        steps = GaugeMetricFamily(f"{PREFIX}_restore_last_duration_seconds", "Duration of each step of the last "
                                  "finished restore", labels=["step"])
        for name in RESTORE_STEPS:
            sec = (last.get("steps") or {}).get(name, {}).get("duration_sec")
            if sec is not None:
                steps.add_metric([name], sec)
        yield steps
        yield from _gauge("restore_last_ok", "1 when the last finished restore succeeded, else 0",
                          int(str(last["status"]) != "failed"))
        yield from _gauge("restore_last_timestamp_seconds", "When the last restore finished (epoch)",
                          last.get("finished_ts") or _ts(last.get("finished_at")))

    def _canary(self) -> Iterator[Metric]:
        verdicts = CounterMetricFamily(f"{PREFIX}_canary_verdicts", "Canary verdicts kept on disk, by outcome",
                                       labels=["outcome"])
        counts: dict[str, int] = {}
        folder = self.settings.backup_dir / "canary"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                verdict = json.loads(path.read_text()).get("verdict")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(verdict, dict) and verdict.get("status"):
                counts[str(verdict["status"])] = counts.get(str(verdict["status"]), 0) + 1
        for outcome, n in sorted(counts.items()):
            verdicts.add_metric([outcome], n)
        yield verdicts
