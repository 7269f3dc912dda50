"""The benchmark runs end to end at a tiny size (timings are reported, never asserted)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_runs_and_writes_the_table(tmp_path):
    report = tmp_path / "performance.md"
    report.write_text("# Performance\n\nintro\n\n<!-- bench:start -->\nSTALE-TABLE\n<!-- bench:end -->\n\nafter\n")
    done = subprocess.run([sys.executable, "-m", "bench.run", "--sizes", "0.005", "--reps", "1",
                           "--workdir", str(tmp_path / "work"), "--write", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("# Performance\n\nintro\n") and text.rstrip().endswith("after")
    assert "STALE-TABLE" not in text and "python -m bench.run --sizes 0.005" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "MiB +" in line]
    assert len(rows) == 1 and rows[0].count("|") == 12
    # the operator's view (CLI through the worker) and the steps' view are both there, with measured RSS
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert re.fullmatch(r"[\d.]+ s \([\d.]+\)", cells[2]), cells  # snapshot: CLI (task)
    assert re.fullmatch(r"[\d.]+ s \(([\d.]+ / ){3}[\d.]+\)", cells[5]), cells  # cold: CLI (steps)
    worker_rss, cli_rss = (float(x) for x in re.findall(r"[\d.]+", cells[10]))
    assert 10 < worker_rss < 256 and 10 < cli_rss < 256, cells[10]
    assert not any((tmp_path / "work").iterdir())  # the run cleans up its data
