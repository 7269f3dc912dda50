"""A corpus of hostile tar archives (gzip and zstd), built member by member with tarfile and, where
tarfile will not write what an attacker would, byte by byte.

Every archive points its attacks at `victim` (an absolute directory outside the staging folder, which
the test watches) or climbs out of the staging folder with '..'. `build_corpus(victim, seed)` returns
(name, compressed bytes, max_bytes) triples; max_bytes is the size cap a restore would pass (the
tar_bytes recorded for the snapshot).
"""

from __future__ import annotations

import gzip
import io
import random
import tarfile
from dataclasses import dataclass
from typing import Callable

import zstandard

BLOCK = 512
Member = tuple[tarfile.TarInfo, bytes | None]


def info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "", mode: int = 0o644,
         **pax) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.linkname, ti.mode, ti.mtime = kind, size, link, mode, 1_700_000_000
    if pax:
        ti.pax_headers = {k: str(v) for k, v in pax.items()}
    return ti


def file(name: str, data: bytes = b"x", mode: int = 0o644) -> Member:
    return info(name, size=len(data), mode=mode), data


def d(name: str, mode: int = 0o755) -> Member:
    return info(name, tarfile.DIRTYPE, mode=mode), None


def sym(name: str, target: str) -> Member:
    return info(name, tarfile.SYMTYPE, link=target), None


def hard(name: str, target: str) -> Member:
    return info(name, tarfile.LNKTYPE, link=target), None


def tar(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for ti, data in members:
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def header(ti: tarfile.TarInfo, fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    return ti.tobuf(fmt, "utf-8", "surrogateescape")


def pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def raw_pax_record(key: str, value: bytes) -> bytes:
    """One pax record, "<len> <key>=<value>\\n", where <len> counts itself."""
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def raw_pax_member(records: bytes, kind: bytes = tarfile.XHDTYPE, name: str = "././@PaxHeader") -> bytes:
    ti = info(name, kind, size=len(records))
    return header(ti) + pad(records)


def end() -> bytes:
    return b"\0" * (BLOCK * 2)


def bad_checksum(ti: tarfile.TarInfo) -> bytes:
    buf = bytearray(header(ti))
    buf[148:156] = b"0000000\0"
    return bytes(buf)


@dataclass
class Hostile:
    name: str
    raw: bytes  # uncompressed tar stream
    max_bytes: int = 1 << 20


def base_cases(victim: str) -> list[Hostile]:
    """Hand-written attacks; `victim` is an absolute directory outside the staging folder."""
    v = victim.rstrip("/")
    rel_out = "../" * 6 + v.lstrip("/")  # climbs out of staging into the victim
    long_name = "a/" * 1100 + "f"  # > 2048 characters, path of ~2200 bytes
    cases: list[Hostile] = []

    def add(name: str, members: list[Member] | bytes, max_bytes: int = 1 << 20, fmt: int = tarfile.PAX_FORMAT):
        raw = members if isinstance(members, bytes) else tar(members, fmt)
        cases.append(Hostile(name, raw, max_bytes))

    # '..' and absolute names
    for name in ("../evil", "a/../../evil", "./../evil", "a/b/../../../evil", "..", "a/..", rel_out + "/evil",
                 "a/./../../evil", "..\\..\\evil/../../x"):
        add(f"dotdot {name[:40]}", [file(name)])
    for name in (f"{v}/abs", f"/{v}/double-slash", "/", "/etc/cron.d/evil", "\\evil", "C:\\evil", "C:/evil",
                 f"{v}/../{v.split('/')[-1]}/abs2"):
        add(f"absolute {name[:40]}", [file(name)])
    add("pax path '..' over a benign name", [(info("benign", size=1, path="../pax-evil"), b"x")])
    add("pax path absolute over a benign name", [(info("benign", size=1, path=f"{v}/pax-abs"), b"x")])
    add("GNU longname with '..'", [file("../" * 40 + "gnu-long-evil")], fmt=tarfile.GNU_FORMAT)
    add("GNU longname absolute", [file(f"{v}/" + "x" * 120 + "/gnu-abs")], fmt=tarfile.GNU_FORMAT)
    # symlinks out
    add("symlink absolute", [sym("s", v)])
    add("symlink absolute, then a file through it", [sym("s", v), file("s/through")])
    add("symlink relative out", [sym("s", rel_out)])
    add("symlink relative out, file through it", [sym("s", rel_out), file("s/through")])
    add("symlink to ..", [sym("s", "..")])
    add("symlink ../ from a subdir", [d("a"), sym("a/s", "../..")])
    add("symlink chain out (a->b, b->..)", [sym("a", "b"), sym("b", "..")])
    add("symlink chain out, three hops", [sym("a", "b"), sym("b", "c"), sym("c", "../..")])
    add("symlink to a dir symlink then up", [d("x"), sym("x/up", ".."), sym("esc", "x/up/..")])
    add("symlink loop", [sym("a", "b"), sym("b", "a")])
    add("symlink self loop", [sym("a", "a")])
    add("symlink to ., then climb through it", [sym("here", "."), file("here/../../evil")])
    add("symlink dir then file via dir name", [sym("dir", v), d("dir/sub"), file("dir/sub/f")])
    add("symlink replaced by dir (duplicate)", [sym("s", v), d("s"), file("s/f")])
    add("dir replaced by symlink (duplicate)", [d("s"), sym("s", v), file("s/f")])
    add("file replaced by symlink (duplicate)", [file("f"), sym("f", v + "/f")])
    add("symlink then hardlink through it", [sym("s", v), hard("h", "s/victim.txt")])
    add("pax linkpath absolute over a benign target", [(info("s", tarfile.SYMTYPE, link="ok", linkpath=v), None)])
    add("pax linkpath '..' over a benign target", [(info("s", tarfile.SYMTYPE, link="ok", linkpath="../../.."), None)])
    add("symlink target with a NUL", [sym("s", "ok\0/../../..")])
    add("symlink target very long", [sym("s", "a/" * 3000)])
    # hardlinks
    add("hardlink absolute", [hard("h", f"{v}/victim.txt")])
    add("hardlink relative out", [hard("h", rel_out + "/victim.txt")])
    add("hardlink to a missing file", [hard("h", "missing")])
    add("hardlink to a symlink", [sym("s", v + "/victim.txt"), hard("h", "s")])
    add("hardlink to a symlink to a dir", [sym("s", v), hard("h", "s")])
    add("hardlink to a directory", [d("dd"), hard("h", "dd")])
    add("hardlink chain to a symlink", [sym("s", v + "/victim.txt"), hard("h1", "s"), hard("h2", "h1")])
    add("hardlink then overwrite by a file", [file("f"), hard("h", "f"), file("h", b"overwrite")])
    add("hardlink to itself", [hard("h", "h")])
    add("hardlink forward reference", [hard("h", "later"), file("later")])
    # special files
    for kind, label in ((tarfile.CHRTYPE, "char device /dev/null"), (tarfile.BLKTYPE, "block device"),
                        (tarfile.FIFOTYPE, "FIFO"), (tarfile.CONTTYPE, "contiguous file"),
                        (b"V", "volume header"), (b"X", "unknown type X"), (b"7", "type 7"), (b"M", "multivolume")):
        ti = info("special", kind)
        ti.devmajor, ti.devminor = 1, 3
        add(label, [(ti, None)])
    sparse = tar([file("sparse", b"abc")], fmt=tarfile.GNU_FORMAT)
    sparse = bytearray(sparse)
    sparse[156:157] = tarfile.GNUTYPE_SPARSE
    sparse[148:156] = b" " * 8
    sparse[148:156] = ("%06o\0 " % sum(sparse[:512])).encode()
    add("GNU sparse file", bytes(sparse))
    # long names
    add("name longer than 4096 bytes", [file("n" * 5000)])
    add("path of 2200 bytes in 1100 folders", [file(long_name)])
    add("component longer than NAME_MAX", [file("c" * 300)])
    add("link target longer than 4096", [sym("s", "t" * 5000)])
    # bombs and caps
    zeros = 100 << 20
    add("10000:1 bomb, one 100 MiB file of zeros (cap 1 MiB)", [(info("zeros", size=zeros), b"\0" * zeros)], 1 << 20)
    add("bomb, 3000 files of 1 KiB (cap 1 MiB)", [file(f"f{i:05d}", b"\0" * 1024) for i in range(3000)], 1 << 20)
    add("cap exactly exceeded by one byte", [file("a", b"\0" * 1000), file("b", b"\0" * 25)], 1024)
    add("negative cap", [file("a")], 0)
    # structure and parser differentials
    add("garbage header in the middle (bad checksum)", pad(header(info("ok", size=1))) + pad(b"x") +
        bad_checksum(info("../evil", size=1)) + pad(b"x") + end())
    add("member after the end-of-archive marker", pad(header(info("ok", size=1))) + pad(b"x") + end() +
        pad(header(info("../after-end", size=1))) + pad(b"x") + end())
    add("global pax header with path '..'", raw_pax_member(raw_pax_record("path", b"../global-evil"), tarfile.XGLTYPE)
        + pad(header(info("benign", size=1))) + pad(b"x") + end())
    add("global pax header with absolute path", raw_pax_member(raw_pax_record("path", f"{v}/g".encode()),
                                                                tarfile.XGLTYPE)
        + pad(header(info("benign", size=1))) + pad(b"x") + end())
    add("two pax headers, second with '..'", raw_pax_member(raw_pax_record("path", b"fine")) +
        raw_pax_member(raw_pax_record("path", b"../double-pax")) + pad(header(info("benign", size=1))) + pad(b"x")
        + end())
    add("pax size larger than the data", raw_pax_member(raw_pax_record("size", b"4096")) +
        pad(header(info("benign", size=1))) + pad(b"x") + pad(header(info("../hidden", size=1))) + pad(b"x") + end())
    add("pax size smaller than the header size", raw_pax_member(raw_pax_record("size", b"0")) +
        pad(header(info("benign", size=600))) + pad(header(info("../smuggled", size=1)) + b"\0" * 88) + end())
    add("pax record with a bad length", raw_pax_member(b"999 path=../bad-len\n") + pad(header(info("b", size=1)))
        + pad(b"x") + end())
    add("pax path with a NUL", raw_pax_member(raw_pax_record("path", b"ok\0../../nul")) +
        pad(header(info("b", size=1))) + pad(b"x") + end())
    add("pax hdrcharset BINARY with '..'", raw_pax_member(raw_pax_record("hdrcharset", b"BINARY") +
                                                          raw_pax_record("path", b"\xff/../../bin-evil")) +
        pad(header(info("b", size=1))) + pad(b"x") + end())
    add("GNU longname 'L' then pax path", raw_pax_member(raw_pax_record("path", b"../l-then-pax")) +
        pad(header(info("././@LongLink", tarfile.GNUTYPE_LONGNAME, size=12))) + pad(b"fine-name\0\0\0") +
        pad(header(info("b", size=1))) + pad(b"x") + end())
    add("GNU longlink 'K' with '..' for a symlink", pad(header(info("././@LongLink", tarfile.GNUTYPE_LONGLINK,
                                                                  size=17))) + pad(b"../../../../long\0")
        + pad(header(info("s", tarfile.SYMTYPE, link="ok"))) + end())
    add("truncated in a member's data", (pad(header(info("big", size=5000))) + b"y" * 1000))
    add("no end-of-archive marker", pad(header(info("f", size=1))) + pad(b"x"))
    add("only zeros", b"\0" * 4096)
    add("trailing garbage after the end", pad(header(info("f", size=1))) + pad(b"x") + end() + b"garbage" * 100)
    add("root is not a directory", [file(".")])
    add("setuid root binary", [file("suid", b"#!/bin/sh\n", mode=0o4755)])
    add("setgid directory", [d("sgid", mode=0o2777), file("sgid/f")])
    add("file through a file (parent is a file)", [file("p"), file("p/child")])
    add("newline and escape in a name", [file("a\nb/../../\x1b[2Jevil")])
    add("duplicate file (second would replace the first)", [file("dup", b"1"), file("dup", b"2")])
    add("directory traversal in a hardlink name", [file("ok"), hard("../hl-evil", "ok")])
    return cases


MUTATORS: list[tuple[str, Callable[[random.Random, str], list[Member]]]] = []


def mutator(fn):
    MUTATORS.append((fn.__name__, fn))
    return fn


def _prefix(rng: random.Random) -> str:
    return "/".join(rng.choice(["a", "b", "data", "x y", "データ", ".hidden"]) for _ in range(rng.randint(0, 4)))


@mutator
def deep_dotdot(rng, v):
    up = "../" * rng.randint(1, 12)
    p = _prefix(rng)
    return [file(f"{p}/{up}evil-{rng.randrange(1 << 20)}".lstrip("/"))]


@mutator
def symlink_escape(rng, v):
    p = _prefix(rng)
    depth = p.count("/") + (1 if p else 0)
    target = rng.choice([v, "../" * (depth + rng.randint(1, 4)), "../" * (depth + 1) + v.lstrip("/"),
                         "./" * rng.randint(0, 3) + "../" * (depth + 1)])
    members = [d(p)] if p else []
    return members + [sym(f"{p}/s".lstrip("/"), target), file(f"{p}/s/through".lstrip("/"))]


@mutator
def symlink_chain(rng, v):
    n = rng.randint(2, 6)
    members = [sym(f"l{i}", f"l{i + 1}") for i in range(n)]
    return members + [sym(f"l{n}", rng.choice(["..", v, "../../..", "l0"]))]


@mutator
def hardlink_escape(rng, v):
    target = rng.choice([f"{v}/victim.txt", "../" * rng.randint(1, 8) + "victim.txt", "missing", "s"])
    members = [sym("s", f"{v}/victim.txt")] if target == "s" else []
    return members + [file("benign"), hard(f"{_prefix(rng)}/h".lstrip("/"), target)]


@mutator
def special(rng, v):
    kind = rng.choice([tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE, tarfile.CONTTYPE])
    ti = info(f"{_prefix(rng)}/dev".lstrip("/"), kind)
    ti.devmajor, ti.devminor = rng.choice([(1, 3), (8, 0), (1, 1)])
    return [file("benign"), (ti, None)]


@mutator
def absolute(rng, v):
    return [file(rng.choice([f"{v}/abs-{rng.randrange(1 << 20)}", "/" + _prefix(rng) + "/abs", "//x",
                             f"{v}/./../{v.split('/')[-1]}/y"]))]


@mutator
def duplicate(rng, v):
    first = rng.choice([file("n"), d("n"), sym("n", "ok")])
    second = rng.choice([sym("n", v), file("n", b"second"), hard("n", "n")])
    return [first, second, file("n/f") if second[0].type == tarfile.SYMTYPE else file("other")]


def random_cases(victim: str, seed: int, count: int) -> list[Hostile]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        name, fn = MUTATORS[i % len(MUTATORS)]
        benign = [file(f"ok{j}", bytes(rng.randrange(256) for _ in range(rng.randint(0, 64))))
                  for j in range(rng.randint(0, 4))]
        attack = fn(rng, victim)
        at = rng.randint(0, len(benign))
        members = benign[:at] + attack + benign[at:]
        try:
            raw = tar(members, rng.choice([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT]))
        except (ValueError, tarfile.TarError):
            raw = tar(members, tarfile.PAX_FORMAT)
        out.append(Hostile(f"random {name} #{i}", raw))
    return out


def compress(raw: bytes, codec: str) -> bytes:
    if codec == "gzip":
        return gzip.compress(raw, compresslevel=1, mtime=0)
    return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)


def build_corpus(victim: str, seed: int, random_count: int) -> list[tuple[str, bytes, int]]:
    corpus = []
    cases = base_cases(victim) + random_cases(victim, seed, random_count)
    for i, case in enumerate(cases):
        codec = ("gzip", "zstd")[i % 2]
        corpus.append((f"{case.name} [{codec}]", compress(case.raw, codec), case.max_bytes))
    return corpus
