"""The drill's result where operators look: the console's "Proven restorable" column, the API's
snapshot JSON (`drill`, null until drilled) and the CLI's `list`."""

from __future__ import annotations

import re

from rollback.drill import run_drill
from rollback.snapshot import create_snapshot
from tests.conftest import cli


def _cell(html: str, snapshot_id: str) -> str:
    row = re.search(rf'<tr data-snapshot="{snapshot_id}">(.*?)</tr>', html, re.S).group(1)
    return re.search(r'<td class="text-nowrap" data-drill="([^"]+)">(.*?)</td>', row, re.S).group(0)


def test_console_api_and_list_show_when_a_snapshot_was_proven_restorable(console, client, api_headers, settings, env):
    drilled = create_snapshot(settings, notes="drilled")
    result = run_drill(settings, drilled["id"])
    assert result["ok"]
    never = create_snapshot(settings, notes="not yet")

    page = console.get("/admin/rollback/").text
    assert "Proven restorable" in page
    cell = _cell(page, drilled["id"])
    assert 'data-drill="ok"' in cell and f"yes, {result['rto_sec']:.1f} s" in cell and result["at"] in cell
    assert 'data-drill="never"' in _cell(page, never["id"]) and "never drilled" in _cell(page, never["id"])

    listed = {e["id"]: e for e in client.get("/admin/rollback/api/snapshots", headers=api_headers).get_json()["snapshots"]}
    assert listed[never["id"]]["drill"] is None
    assert listed[drilled["id"]]["drill"] == {k: result[k] for k in ("at", "ok", "rto_sec", "phases", "error")}

    lines = {line.split()[0]: line for line in cli(env, "list").stdout.splitlines()[1:]}
    assert "PROVEN RESTORABLE" in cli(env, "list").stdout.splitlines()[0]
    assert f"yes {result['at'].replace('T', ' ')[:16]}" in lines[drilled["id"]]
    assert "never drilled" in lines[never["id"]]
