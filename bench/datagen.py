"""Benchmark data: a realistic database and data directory of a given size.

Database: users → trips → bookings with foreign keys, JSONB columns, btree and GIN indexes, built with
set-based SQL so 2 GB takes about a minute. Data dir: many small JSON files plus a few large binaries,
half of the bytes incompressible (random), half compressible (JSON and text).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import psycopg

# Rows per GB were measured once (pg_database_size after load, indexes included).
BOOKING_ROWS_PER_GB = 1_350_000


def create_database(admin_url: str, name: str, size_gb: float) -> int:
    """(Re)create database `name` with about size_gb of data; returns its size in bytes."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    bookings = max(1000, int(BOOKING_ROWS_PER_GB * size_gb))
    users = max(100, bookings // 20)
    trips = max(200, bookings // 5)
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            create table alembic_version (version_num varchar(32) primary key);
            insert into alembic_version values ('bench_0001');
            create table users (id bigint generated always as identity primary key, email text not null unique,
                                name text not null, profile jsonb not null, created_at timestamptz not null);
            create table trips (id bigint generated always as identity primary key,
                                user_id bigint not null references users(id) on delete cascade,
                                title text not null, plan jsonb not null);
            create table bookings (id bigint generated always as identity primary key,
                                   trip_id bigint not null references trips(id) on delete cascade,
                                   kind text not null, price numeric(10,2) not null, details jsonb not null,
                                   booked_at timestamptz not null);
        """)
        conn.execute("""insert into users (email, name, profile, created_at)
            select 'user' || i || '@example.com', 'User ' || i,
                   jsonb_build_object('lang', (array['ja','en','ko','zh'])[1 + i %% 4], 'score', i %% 97,
                                      'tags', jsonb_build_array('t' || (i %% 13), 't' || (i %% 7))),
                   now() - (i || ' minutes')::interval
            from generate_series(1, %s) i""", (users,))
        conn.execute("""insert into trips (user_id, title, plan)
            select 1 + (i %% %s), 'Trip ' || i || ' to ' || (array['Kyoto','Osaka','Nara','Sapporo'])[1 + i %% 4],
                   jsonb_build_object('days', 1 + i %% 9, 'note', md5(i::text))
            from generate_series(1, %s) i""" % (users, trips))
        conn.execute("""insert into bookings (trip_id, kind, price, details, booked_at)
            select 1 + (i %% %s), (array['hotel','train','tour','meal'])[1 + i %% 4], (i %% 50000) / 100.0,
                   jsonb_build_object('ref', md5(i::text), 'seats', i %% 5, 'memo', repeat(md5((i * 7)::text), 2)),
                   now() - (i || ' seconds')::interval
            from generate_series(1, %s) i""" % (trips, bookings))
        conn.execute("create index ix_bookings_trip on bookings (trip_id)")
        conn.execute("create index ix_bookings_details on bookings using gin (details)")
        conn.execute("create index ix_trips_user on trips (user_id)")
        conn.execute("vacuum analyze")
        return conn.execute("select pg_database_size(current_database())").fetchone()[0]


def create_data_dir(root: Path, size_gb: float, seed: int = 7) -> int:
    """Fill `root` with about size_gb: half random binaries, half small JSON files. Returns bytes."""
    rng = random.Random(seed)
    target = int(size_gb * (1 << 30))
    root.mkdir(parents=True, exist_ok=True)
    written = 0
    binaries = root / "media"
    binaries.mkdir(exist_ok=True)
    big = max(1 << 20, min(64 << 20, target // 16))
    while written < target // 2:
        n = min(big, target // 2 - written) or 1
        (binaries / f"blob-{written:012d}.bin").write_bytes(os.urandom(n))
        written += n
    i = 0
    while written < target:
        folder = root / "records" / f"{i // 1000:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        doc = {"id": i, "name": f"record {i}", "items": [
            {"k": rng.random(), "v": "x" * rng.randint(10, 400), "tags": ["a", "b", str(i % 17)]}
            for _ in range(rng.randint(5, 60))]}
        data = json.dumps(doc).encode()
        (folder / f"{i}.json").write_bytes(data)
        written += len(data)
        i += 1
    (root / "users.json").write_text(json.dumps([{"id": 1, "name": "Aiko"}]))
    return written
