"""The benchmark runs end to end at a tiny size (timings are reported, never asserted)."""

from __future__ import annotations

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
    assert len(rows) == 1 and rows[0].count("|") == 11
    assert not any((tmp_path / "work").iterdir())  # the run cleans up its data
