"""Figures for docs/reliability.md: upload (+ read-back) and fetch of a snapshot holding REMOTE_FIGURES_MIB of
incompressible data, in clear and encrypted, against the loopback moto server. Off by default (it moves
hundreds of MiB); run with `REMOTE_FIGURES_MIB=128 python -m pytest -q -s tests/remote/test_throughput.py`."""

from __future__ import annotations

import os
import secrets
import shutil
import time

import pytest

from rollback import remote
from rollback.snapshot import create_snapshot
from rollback.verify import verify_snapshot

MIB = int(os.environ.get("REMOTE_FIGURES_MIB", "0"))


@pytest.mark.skipif(not MIB, reason="set REMOTE_FIGURES_MIB to measure")
@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "encrypted"])
def test_upload_and_fetch_throughput(remote_settings, encrypted):
    settings = remote_settings.with_overrides(
        encryption_key=secrets.token_bytes(32) if encrypted else None)
    with open(settings.data_base_dir / "random.bin", "wb") as f:
        for _ in range(MIB):
            f.write(os.urandom(1 << 20))
    entry = create_snapshot(settings)
    size = sum(a["size"] for a in entry["artifacts"].values())
    started = time.monotonic()
    remote.upload_snapshot(settings, entry["id"])
    upload = time.monotonic() - started
    shutil.rmtree(settings.backup_dir / entry["id"])
    started = time.monotonic()
    remote.fetch_snapshot(settings, entry["id"])
    fetch = time.monotonic() - started
    assert verify_snapshot(settings, entry["id"])["ok"]
    label = "encrypted" if encrypted else "clear"
    print(f"\nFIGURE {label}: {size >> 20} MiB snapshot: upload + read-back {upload:.1f} s "
          f"({size / upload / (1 << 20):.0f} MiB/s of artifact), fetch + verify {fetch:.1f} s "
          f"({size / fetch / (1 << 20):.0f} MiB/s)")
