"""The writes users make after the snapshot, recorded as the ground truth a report must match."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from tests import state


@dataclass
class GroundTruth:
    inserted: dict[str, list[int]] = field(default_factory=lambda: {"users": [], "trips": []})
    updated: dict[str, set[int]] = field(default_factory=lambda: {"users": set(), "trips": set()})
    deleted: dict[str, list[int]] = field(default_factory=lambda: {"users": [], "trips": []})
    names: dict[int, str] = field(default_factory=dict)
    files_added: list[str] = field(default_factory=list)
    files_changed: list[str] = field(default_factory=list)
    files_removed: list[str] = field(default_factory=list)
    upload_bytes: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of_bad_deploy(cls) -> "GroundTruth":
        """What tests.state.bad_deploy writes (besides its schema change)."""
        truth = cls()
        truth.updated["users"].update(range(1, 11))
        truth.deleted["trips"].append(2)
        truth.inserted["users"].append(51)
        truth.names[51] = "New"
        truth.files_added.append("uploads/new-file.txt")
        truth.upload_bytes["uploads/new-file.txt"] = b"added by the deploy"
        truth.files_changed += ["users.hardlink.json", "users.json"]  # one inode, two names
        truth.files_removed.append("café.txt")
        return truth

    @property
    def uploads(self) -> list[str]:
        return self.files_added

    def expected(self, table: str) -> dict[str, list[int]]:
        inserted = set(self.inserted[table])
        return {"insert": sorted(inserted), "update": sorted(self.updated[table] - inserted),
                "delete": sorted(self.deleted[table])}

    def file_ops(self) -> list[tuple[str, str]]:
        return sorted([("added", p) for p in self.files_added] + [("changed", p) for p in self.files_changed]
                      + [("removed", p) for p in self.files_removed])


def keep_writing(settings, truth: GroundTruth) -> None:
    """Sign-ups, edits, a deletion, a sign-up deleted again (nothing to report), trips, uploads."""
    with state.connect(settings) as conn:
        for i in range(5):
            name = f"Late {i} 日本"
            uid = conn.execute("insert into users (email, name, nickname) values (%s, %s, 'n') returning id",
                               (f"late{i}@example.com", name)).fetchone()[0]
            truth.inserted["users"].append(uid)
            truth.names[uid] = name
        gone = conn.execute("insert into users (email, name) values ('gone@example.com', 'Gone') returning id").fetchone()[0]
        conn.execute("delete from users where id = %s", (gone,))
        conn.execute("update users set name = 'Renamed' where id in (5, 20)")
        truth.updated["users"].update({5, 20})
        conn.execute("delete from users where id = 30")
        truth.deleted["users"].append(30)
        trip = conn.execute("""insert into trips (user_id, title, plan) values (%s, 'Late trip', '{"days": 2}')
                               returning id""", (truth.inserted["users"][1],)).fetchone()[0]
        truth.inserted["trips"].append(trip)
        conn.execute("""update trips set plan = '{"days": 4, "note": "longer"}' where id = 1""")
        truth.updated["trips"].add(1)
    d = settings.data_base_dir
    for rel, size in (("uploads/2026/u52.png", 4096), ("uploads/notes-new.txt", 10)):
        data = os.urandom(size)
        (d / rel).write_bytes(data)
        truth.files_added.append(rel)
        truth.upload_bytes[rel] = data
    (d / "uploads" / "旅行メモ.txt").unlink()
    truth.files_removed.append("uploads/旅行メモ.txt")
    with open(d / "uploads" / "2026" / "photo.bin", "r+b") as f:  # same size, new content
        f.write(b"edited")
    truth.files_changed.append("uploads/2026/photo.bin")
