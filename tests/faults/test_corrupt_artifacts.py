"""Item 2: corrupt artifacts. Byte flips at random offsets, truncation (1 byte, half) and appended bytes
on the dump, the data archive and manifest.json.

Each mutation is followed by a restore attempt through the core (`begin_restore` + the steps, exactly
what the CLI's --local and the worker run). Every one must be refused before any destructive action:
the journal shows the preflight failed (or no txn was admitted), no step after it ran, and the live
state (code, data tree, rows, Alembic revision, the list of databases) is unchanged. A corrupt
manifest.json is a typed error (ManifestCorrupt; exit 1 with one line from the CLI), never a crash
and never rewritten. Without MANIFEST_HMAC_KEY a mutation that keeps the JSON valid and only touches
a descriptive field (notes, created_at, ...) cannot be told from an edit: those are counted as
`undetected` (the artifacts they point to are still hash-checked); with the key every one is refused.
"""

from __future__ import annotations

import json
import os
import random

import pytest

from rollback import restore as core
from rollback.errors import LockHeld, ManifestCorrupt, RollbackError, StepFailed
from rollback.journal import Journal
from rollback.manifest import Manifest
from rollback.snapshot import create_snapshot
from rollback.standby import tree_digest
from rollback.verify import verify_snapshot
from tests import state
from tests.conftest import _admin, cli
from tests.faults import figures as F

KINDS = ("flip", "truncate-1", "truncate-half", "append")


def mutate(data: bytes, kind: str, rng: random.Random) -> bytes:
    if kind == "flip":
        pos = rng.randrange(len(data))
        return data[:pos] + bytes([data[pos] ^ rng.randrange(1, 256)]) + data[pos + 1:]
    if kind == "truncate-1":
        return data[:-1]
    if kind == "truncate-half":
        return data[: len(data) // 2]
    return data + os.urandom(rng.randint(1, 4096))


CHECKED = ("id", "app_revision", "alembic_revision") + tuple(
    f"artifacts.{a}.{k}" for a in ("db", "data") for k in ("file", "sha256", "size"))


def _changed_paths(new: object, old: object, prefix: str = "") -> list[str]:
    if isinstance(new, dict) and isinstance(old, dict):
        out = []
        for key in sorted(set(new) | set(old), key=str):
            out += _changed_paths(new.get(key), old.get(key), f"{prefix}{key}.")
        return out
    return [] if new == old else [prefix.rstrip(".")]


def live_state(settings) -> tuple:
    """Cheap but complete enough: code, data tree (paths, modes, sizes, mtimes), rows, revision, databases."""
    with _admin() as conn:
        dbs = sorted(r[0] for r in conn.execute("select datname from pg_database where datname like %s",
                                                (settings.database.dbname + "%",)))
    return (state.git_head(settings.app_repo_dir), tree_digest(settings.data_base_dir), state.row_hashes(settings),
            state.alembic_version(settings), dbs)


@pytest.fixture
def corrupt_setup(settings):
    good = create_snapshot(settings, notes="good")
    state.bad_deploy(settings, settings.app_repo_dir)
    return good


def attempt_restore(settings, snapshot_id: str) -> tuple[str, str]:
    """Run a restore the way --local does; return (outcome, detail). Never lets a non-typed error pass."""
    try:
        doc = core.begin_restore(settings, snapshot_id, reason="corruption test", requested_by="faults")
    except ManifestCorrupt as exc:
        return "refused: manifest corrupt", str(exc)
    except RollbackError as exc:
        return f"refused at admission ({type(exc).__name__})", str(exc)
    try:
        core.run_step(settings, doc["txn"], "preflight", doc["attempt"])
    except StepFailed as exc:
        steps = Journal(settings.backup_dir).load(doc["txn"])["steps"]
        later = {s: v["status"] for s, v in steps.items() if s != "preflight"}
        assert set(later.values()) == {"pending"}, later
        return "refused at preflight", str(exc)
    # The preflight passed: do not run the destructive steps; give the service back.
    core.abandon(settings, doc["txn"], "corruption test: stopped after the preflight")
    return "accepted", ""


@pytest.mark.parametrize("target", ["dump", "archive"])
def test_corrupt_artifact_is_refused_before_anything_changes(target, settings, corrupt_setup, figures):
    rng = random.Random()
    entry = corrupt_setup
    art = entry["artifacts"]["db" if target == "dump" else "data"]
    path = settings.backup_dir / entry["id"] / art["file"]
    pristine = path.read_bytes()
    before = live_state(settings)
    case = figures.case(2, f"corrupt {target} ({art['file']}, {len(pristine)} bytes)")
    for i in range(F.runs(100, 300)):
        kind = KINDS[i % len(KINDS)]
        case.begin()
        path.write_bytes(mutate(pristine, kind, rng))
        try:
            outcome, detail = attempt_restore(settings, entry["id"])
        finally:
            path.write_bytes(pristine)
        changed = live_state(settings) != before
        case.run(f"{outcome}" if not changed else f"{outcome}, LIVE STATE CHANGED", data_lost=int(changed))
        assert outcome == "refused at preflight", (kind, outcome, detail)
        assert not changed, kind
    assert state.capture(settings)["head"] == before[0]


@pytest.mark.parametrize("signed", [False, True], ids=["no-hmac", "hmac"])
def test_corrupt_manifest_is_a_typed_error_and_never_rewritten(signed, settings, corrupt_setup, figures):
    rng = random.Random()
    entry = corrupt_setup
    key = "k" * 8 + os.urandom(16).hex() if signed else None
    settings = settings.with_overrides(manifest_hmac_key=key)
    try:
        mpath = settings.backup_dir / "manifest.json"
        if signed:
            Manifest.for_settings(settings).sign()
        pristine = mpath.read_bytes()
        original = json.loads(pristine)
        before = live_state(settings)
        case = figures.case(2, f"corrupt manifest.json ({'with' if signed else 'without'} MANIFEST_HMAC_KEY)")
        undetected = []
        for i in range(F.runs(100, 300)):
            kind = KINDS[i % len(KINDS)]
            case.begin()
            for tries in range(50):  # a mutation must change the content, not only the layout (a space, the last "\n")
                mutated = mutate(pristine if tries < 10 else pristine.rstrip(), kind, rng)
                try:
                    if json.loads(mutated) == original:
                        continue
                except ValueError:
                    pass
                break
            else:
                raise AssertionError(f"no content-changing {kind} mutation found")
            mpath.write_bytes(mutated)
            try:
                outcome, detail = attempt_restore(settings, entry["id"])
                if i % 6 == 0:  # a writer too: it must refuse, or (an edit it cannot see) keep every entry
                    try:
                        verify_snapshot(settings, entry["id"])
                    except ManifestCorrupt:
                        assert mpath.read_bytes() == mutated, "a corrupt manifest was rewritten"
                    except RollbackError:
                        pass
                    else:
                        assert [e["id"] for e in Manifest.for_settings(settings).entries()] == [entry["id"]]
                if outcome == "refused: manifest corrupt":
                    assert mpath.read_bytes() == mutated, "a corrupt manifest was rewritten"
            finally:
                mpath.write_bytes(pristine)
            if outcome == "accepted":
                changed = _changed_paths(json.loads(mutated)["snapshots"][0], original["snapshots"][0])
                # What identifies the data restored is hash-checked: a change there is never accepted.
                assert not [p for p in changed if p in CHECKED], changed
                undetected.append(",".join(changed))
                outcome = ("undetected: tar_bytes (shown by test_preflight_checks_the_recorded_tar_size)"
                           if any(p.endswith(".tar_bytes") for p in changed) else "undetected (descriptive field)")
            changed_live = live_state(settings) != before
            case.run(outcome, data_lost=int(changed_live))
            assert not changed_live, kind
            if signed:
                assert outcome == "refused: manifest corrupt", (kind, outcome, detail)
        if undetected:
            case.note("undetected without the key: " + "; ".join(sorted(set(undetected))[:8]))
    finally:
        settings = settings.with_overrides(manifest_hmac_key=None)


@pytest.mark.parametrize("kind", KINDS)
def test_cli_reports_a_corrupt_manifest_in_one_line(kind, settings, env):
    create_snapshot(settings)
    mpath = settings.backup_dir / "manifest.json"
    data = mpath.read_bytes()
    mutated = {"flip": data.replace(b'"snapshots"', b'"snapshotz"'), "truncate-1": data.rstrip()[:-1],
               "truncate-half": data[: len(data) // 2], "append": data + os.urandom(64)}[kind]
    mpath.write_bytes(mutated)
    for args in (["list"], ["restore", "--snapshot", "latest", "--reason", "r", "--yes", "--local"],
                 ["snapshot", "--local"]):
        done = cli(env, *args)
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and done.stderr.startswith("error: "), done.stderr
        assert "left untouched" in done.stderr, done.stderr
    assert mpath.read_bytes() == mutated


def test_signed_manifest_refuses_a_forged_entry_and_a_stripped_signature(settings, corrupt_setup, figures):
    """An attacker who can write BACKUP_DIR but not read the key: re-pointing an entry at a changed
    archive (new sha256/size), or removing the HMAC, is refused; nothing is rewritten."""
    case = figures.case(2, "tampered signed manifest (forged entry, stripped HMAC, other key)")
    entry = corrupt_setup
    key = os.urandom(24).hex()
    settings = settings.with_overrides(manifest_hmac_key=key)
    try:
        Manifest.for_settings(settings).sign()
        mpath = settings.backup_dir / "manifest.json"
        signed = mpath.read_bytes()
        before = live_state(settings)
        doc = json.loads(signed)
        forged = json.loads(signed)
        forged["snapshots"][0]["artifacts"]["data"]["sha256"] = "0" * 64
        stripped = {k: v for k, v in doc.items() if k != "hmac"}
        for name, body in (("forged entry", forged), ("stripped HMAC", stripped)):
            raw = json.dumps(body, indent=2).encode()
            mpath.write_bytes(raw)
            outcome, detail = attempt_restore(settings, entry["id"])
            case.run(outcome)
            assert outcome == "refused: manifest corrupt", (name, detail)
            assert mpath.read_bytes() == raw
            with pytest.raises(ManifestCorrupt):
                create_snapshot(settings)
            assert mpath.read_bytes() == raw
        mpath.write_bytes(signed)
        settings = settings.with_overrides(manifest_hmac_key=os.urandom(24).hex())  # a different key
        outcome, detail = attempt_restore(settings, entry["id"])
        case.run(outcome)
        assert outcome == "refused: manifest corrupt" and "HMAC mismatch" in detail
        settings = settings.with_overrides(manifest_hmac_key=None)  # no key at all: reads work, rewrites refused
        with pytest.raises(RollbackError, match="signed"):
            verify_snapshot(settings, entry["id"])
        assert mpath.read_bytes() == signed
        assert live_state(settings) == before
    finally:
        settings = settings.with_overrides(manifest_hmac_key=None)


def test_snapshot_and_restore_work_with_a_signed_manifest(settings):
    settings = settings.with_overrides(manifest_hmac_key=os.urandom(24).hex())
    try:
        before = state.capture(settings)
        first = create_snapshot(settings)
        assert json.loads((settings.backup_dir / "manifest.json").read_text())["hmac"].startswith("sha256:")
        (settings.data_base_dir / "users.json").write_text("changed")
        doc = core.run_restore_local(settings, first["id"], reason="signed")
        assert doc["status"] == "succeeded" and state.capture(settings) == before
        verify_snapshot(settings, first["id"])  # a rewrite keeps it signed
        assert Manifest.for_settings(settings).entries()[0]["verified"]["ok"] is True
    finally:
        settings = settings.with_overrides(manifest_hmac_key=None)


def test_cli_with_the_key_refuses_a_tampered_manifest(settings, env):
    key = os.urandom(24).hex()
    settings = settings.with_overrides(manifest_hmac_key=key)
    try:
        create_snapshot(settings)
    finally:
        settings = settings.with_overrides(manifest_hmac_key=None)
    mpath = settings.backup_dir / "manifest.json"
    doc = json.loads(mpath.read_text())
    doc["snapshots"][0]["notes"] = "edited by someone without the key"
    mpath.write_text(json.dumps(doc))
    done = cli(dict(env, MANIFEST_HMAC_KEY=key), "list")
    assert done.returncode == 1 and "HMAC mismatch" in done.stderr, (done.stdout, done.stderr)


def test_lock_held_is_not_a_refusal_reason_here(settings):
    """Guard for the tests above: a leftover owner would turn every attempt into a LockHeld refusal."""
    from rollback.lock import ServiceLock

    assert ServiceLock(settings.backup_dir).active() is None
    with pytest.raises(LockHeld):
        with ServiceLock(settings.backup_dir).held({"kind": "a"}):
            with ServiceLock(settings.backup_dir).held({"kind": "b"}):
                pass


def test_preflight_checks_the_recorded_tar_size(settings, corrupt_setup):
    entry = corrupt_setup
    Manifest.for_settings(settings).update(entry["id"], artifacts=dict(
        entry["artifacts"], data=dict(entry["artifacts"]["data"], tar_bytes=entry["artifacts"]["data"]["tar_bytes"] // 4)))
    before = live_state(settings)
    with pytest.raises(StepFailed) as failed:
        core.run_restore_local(settings, entry["id"], reason="shrunk tar_bytes")
    try:
        assert failed.value.step == "preflight", str(failed.value)
        assert live_state(settings) == before
    finally:
        txn = Journal(settings.backup_dir).all()[-1]["txn"]
        assert Journal(settings.backup_dir).load(txn)["status"] == "failed"
