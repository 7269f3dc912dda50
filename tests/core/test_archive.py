"""rollback.archive, proc.stream and the fsutil helpers they use: real GNU tar, hostile archives built with tarfile."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest

from rollback import proc
from rollback.archive import (
    CODECS,
    DEFAULT_EXCLUDES,
    ArchiveInfo,
    create_archive,
    extract_archive,
    scan_archive,
)
from rollback.archive import create as archive_create
from rollback.archive import extract as archive_extract
from rollback.errors import CommandFailed, IntegrityError, RollbackError, UnsafeArchive
from rollback.fsutil import HashingWriter, atomic_write_bytes, fsync_tree, sha256_file

MiB = 1 << 20


# --------------------------------------------------------------------------- helpers


def build_tree(root: Path) -> None:
    """A small data dir with every kind of entry that must survive a round trip."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "deep.txt").write_text("deep")
    (root / "empty").mkdir()
    (root / "private.txt").write_bytes(b"secret")
    os.chmod(root / "private.txt", 0o640)
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "run.sh", 0o755)
    os.symlink("a/b/c/deep.txt", root / "link")
    (root / "big.bin").write_bytes(os.urandom(3 * MiB // 2))  # > one read chunk
    os.link(root / "big.bin", root / "big-hardlink.bin")
    (root / "データ").mkdir()
    (root / "データ" / "日本語.json").write_text('{"ok": true}', encoding="utf-8")
    (root / "café.txt").write_text("crème", encoding="utf-8")
    (root / "readonly").mkdir()
    (root / "readonly" / "inside.txt").write_text("ro")
    os.chmod(root / "readonly", 0o555)


def entries(root: Path) -> dict[str, tuple]:
    """Comparable description of a tree: kind, permission bits, content/target, mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                found[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                found[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_mtime_ns)
            else:
                found[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes(), st.st_mtime_ns)
    return found


def all_paths(root: Path) -> set[str]:
    paths = set()
    for dirpath, dirnames, filenames in os.walk(root):
        paths.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return paths


def tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def make_tgz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    path.write_bytes(gzip.compress(tar_bytes(members)))


def member(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes | None = None, link: str = "", mode=0o644):
    info = tarfile.TarInfo(name)
    if "\0" in name:
        info.pax_headers = {"path": name}  # a plain ustar name field would cut at the NUL
    info.type = kind
    info.mode = mode
    info.linkname = link
    if kind == tarfile.REGTYPE and data is None:
        data = b"x"
    return info, data


def file_digest(path: Path) -> tuple[str, int]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def extract(path: Path, dest: Path, *, max_bytes: int = 100 * MiB, **kw) -> None:
    sha, size = file_digest(path)
    extract_archive(path, dest, expected_sha256=sha, expected_size=size, max_bytes=max_bytes, **kw)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src)
    yield src
    os.chmod(src / "readonly", 0o755)


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_round_trip_preserves_tree(tmp_path: Path, tree: Path, codec: str):
    seen = []
    archive = tmp_path / f"data{CODECS[codec]}"
    info = create_archive(tree, archive, codec=codec, progress=seen.append)
    assert info.codec == codec
    dest = tmp_path / "out"
    written = []
    extract(archive, dest, progress=written.append)

    assert entries(dest) == entries(tree)
    assert stat.S_IMODE((dest / "private.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert os.readlink(dest / "link") == "a/b/c/deep.txt"
    assert (dest / "big.bin").stat().st_ino == (dest / "big-hardlink.bin").stat().st_ino
    assert (dest / "データ" / "日本語.json").read_text(encoding="utf-8") == '{"ok": true}'
    assert (dest / "empty").is_dir() and not any((dest / "empty").iterdir())
    assert stat.S_IMODE(dest.stat().st_mode) == stat.S_IMODE(tree.stat().st_mode)
    assert seen and seen[-1] == info.tar_bytes and seen == sorted(seen)
    # progress counts the compressed bytes fed to tar
    assert written[-1] == info.size
    os.chmod(dest / "readonly", 0o755)


def test_archive_info_matches_file(tmp_path: Path, tree: Path):
    dest = tmp_path / "data.tar.gz"
    info = create_archive(tree, dest, gzip_level=6)
    assert isinstance(info, ArchiveInfo)
    assert (info.file, info.codec) == ("data.tar.gz", "gzip")
    assert (info.sha256, info.size) == file_digest(dest)
    assert info.tar_bytes == len(gzip.decompress(dest.read_bytes()))
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    report = scan_archive(dest, max_bytes=info.tar_bytes)
    regular = [p.lstat() for p in tree.rglob("*") if stat.S_ISREG(p.lstat().st_mode)]
    assert report.total_bytes == sum({st.st_ino: st.st_size for st in regular}.values())  # hardlink once


def test_top_level_excludes_only(tmp_path: Path):
    src = tmp_path / "src"
    for d in (".pre-x", ".rollback-stage-y", ".rollback-standby", "sub/.pre-z", "sub/.rollback-stage-w"):
        (src / d).mkdir(parents=True)
        (src / d / "f").write_text(d)
    (src / ".pre-file").write_text("top-level file also excluded")
    assert DEFAULT_EXCLUDES == (".pre-*", ".rollback-stage-*", ".rollback-standby*")
    create_archive(src, tmp_path / "a.tar.gz")
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        names = {m.name for m in tar}
    assert names == {".", "./sub", "./sub/.pre-z", "./sub/.pre-z/f",
                     "./sub/.rollback-stage-w", "./sub/.rollback-stage-w/f"}


# --------------------------------------------------------------------------- create failures


def test_create_refuses_existing_dest_and_keeps_it(tmp_path: Path, tree: Path):
    dest = tmp_path / "data.tar.gz"
    dest.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        create_archive(tree, dest)
    assert dest.read_bytes() == b"precious"


def test_tar_failure_raises_command_failed_and_removes_partial(tmp_path: Path):
    dest = tmp_path / "data.tar.gz"
    with pytest.raises(CommandFailed) as err:
        create_archive(tmp_path / "missing", dest)
    assert err.value.argv[0] == "tar" and err.value.returncode != 0
    assert "missing" in err.value.stderr
    assert not dest.exists()


def test_enospc_while_writing_propagates_and_removes_partial(tmp_path: Path, tree: Path, monkeypatch):
    class FullDisk(HashingWriter):
        def write(self, data):
            if self.size > 1000:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(data)

    monkeypatch.setattr(archive_create, "HashingWriter", FullDisk)
    dest = tmp_path / "data.tar.gz"
    with pytest.raises(OSError) as err:
        create_archive(tree, dest, gzip_level=0)
    assert err.value.errno == errno.ENOSPC and not isinstance(err.value, CommandFailed)
    assert not dest.exists()


def test_command_timeout_kills_the_process():
    started = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out"):
        proc.stream(["sleep", "5"], stdout=lambda chunk: None, timeout=0.2)
    assert time.monotonic() - started < 4


# --------------------------------------------------------------------------- extract failures


@pytest.fixture(params=["gzip", "zstd"])
def good_archive(request, tmp_path: Path, tree: Path) -> Path:
    path = tmp_path / f"data{CODECS[request.param]}"
    create_archive(tree, path, codec=request.param)
    return path


def test_extract_refuses_existing_dest(tmp_path: Path, good_archive: Path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep").write_text("keep")
    with pytest.raises(FileExistsError):
        extract(good_archive, dest)
    assert (dest / "keep").read_text() == "keep"


def test_hash_mismatch_removes_dest(tmp_path: Path, good_archive: Path):
    if good_archive.suffix == ".zst":
        pytest.skip("zstd has no header byte that its decoder ignores; the flipped-byte test covers it")
    sha, size = file_digest(good_archive)
    data = bytearray(good_archive.read_bytes())
    data[4] ^= 0xFF  # gzip header mtime: gzip itself does not notice, only our hash does
    good_archive.write_bytes(data)
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="does not match") as err:
        extract_archive(good_archive, dest, expected_sha256=sha, expected_size=size, max_bytes=100 * MiB)
    assert type(err.value) is IntegrityError
    assert not dest.exists()


def test_flipped_byte_in_compressed_data(tmp_path: Path, good_archive: Path):
    data = bytearray(good_archive.read_bytes())
    data[len(data) // 2] ^= 0x01
    good_archive.write_bytes(data)
    with pytest.raises(IntegrityError) as err:
        extract(good_archive, tmp_path / "out")
    assert type(err.value) is IntegrityError
    assert not (tmp_path / "out").exists()


def test_size_mismatch(tmp_path: Path, good_archive: Path):
    sha, size = file_digest(good_archive)
    with pytest.raises(IntegrityError, match="size"):
        extract_archive(good_archive, tmp_path / "out", expected_sha256=sha, expected_size=size + 1,
                        max_bytes=100 * MiB)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keep", [0.5, 0.99, 10])
def test_truncated_archive(tmp_path: Path, good_archive: Path, keep):
    data = good_archive.read_bytes()
    good_archive.write_bytes(data[: int(len(data) * keep)] if keep < 1 else data[:keep])
    with pytest.raises(IntegrityError) as err:
        extract(good_archive, tmp_path / "out")
    assert type(err.value) is IntegrityError
    with pytest.raises(IntegrityError):
        scan_archive(good_archive, max_bytes=100 * MiB)
    assert not (tmp_path / "out").exists()


def test_garbage_header_after_first_member_is_not_a_silent_end(tmp_path: Path):
    """tarfile quietly stops at an invalid header; the scan must not take that as the end."""
    raw = bytearray(tar_bytes([member("a"), member("b")]))
    assert raw[1024:1026] == b"b\0"  # header of 'b' follows a's header and one data block
    raw[1024 + 148 : 1024 + 156] = b"garbage!"  # break its checksum
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(gzip.compress(bytes(raw)))
    with tarfile.open(path) as tar:
        assert [m.name for m in tar] == ["a"]  # what plain tarfile makes of it
    with pytest.raises(IntegrityError, match="truncated or has an invalid header"):
        scan_archive(path, max_bytes=MiB)


def test_data_after_end_of_archive(tmp_path: Path):
    path = tmp_path / "x.tar.gz"
    path.write_bytes(gzip.compress(tar_bytes([member("a")]) + b"smuggled"))
    with pytest.raises(IntegrityError, match="after the end"):
        scan_archive(path, max_bytes=MiB)


# --------------------------------------------------------------------------- hostile archives

HOSTILE = {
    "dotdot": [member("../evil")],
    "absolute": [member("/abs")],
    "nested-dotdot": [member("a/../../x")],
    "backslash-absolute": [member("\\windows")],
    "drive-letter": [member("C:evil")],
    "symlink-absolute": [member("etc", tarfile.SYMTYPE, link="/etc")],
    "symlink-up": [member("sub", tarfile.DIRTYPE, mode=0o755), member("sub/up", tarfile.SYMTYPE, link="../..")],
    "through-symlink": [member("link", tarfile.SYMTYPE, link=".."), member("link/x")],
    "through-inside-symlink": [member("d", tarfile.DIRTYPE), member("link", tarfile.SYMTYPE, link="d"),
                               member("link/x")],
    "symlink-chain-escape": [member("b", tarfile.SYMTYPE, link="a/.."), member("a", tarfile.SYMTYPE, link=".")],
    "symlink-loop": [member("a", tarfile.SYMTYPE, link="b"), member("b", tarfile.SYMTYPE, link="a")],
    "hardlink-outside": [member("passwd", tarfile.LNKTYPE, link="/etc/passwd")],
    "hardlink-dotdot": [member("passwd", tarfile.LNKTYPE, link="../x")],
    "hardlink-to-symlink": [member("s", tarfile.SYMTYPE, link="f"), member("h", tarfile.LNKTYPE, link="s")],
    "hardlink-to-dir": [member("d", tarfile.DIRTYPE), member("h", tarfile.LNKTYPE, link="d")],
    "hardlink-to-missing": [member("h", tarfile.LNKTYPE, link="nothing")],
    "hardlink-to-later": [member("h", tarfile.LNKTYPE, link="f"), member("f")],
    "fifo": [member("fifo", tarfile.FIFOTYPE)],
    "char-device": [member("null", tarfile.CHRTYPE)],
    "block-device": [member("sda", tarfile.BLKTYPE)],
    "contiguous": [member("c", tarfile.CONTTYPE, data=b"x")],
    "long-name": [member("n" * 5000)],
    "nul-in-name": [member("a\0b")],
    "file-replaces-dir": [member("d", tarfile.DIRTYPE), member("d/f"), member("d")],
    "symlink-replaces-dir": [member("d/f"), member("d", tarfile.SYMTYPE, link=".")],
    "file-replaces-symlink": [member("s", tarfile.SYMTYPE, link="t"), member("s")],
    "file-under-file": [member("f"), member("f/g")],
    "root-is-a-file": [member(".")],
    "too-big": [member("a", data=b"a" * 600), member("b", data=b"b" * 600)],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused(tmp_path: Path, case: str):
    work = tmp_path / "work"
    work.mkdir()
    path = work / "evil.tar.gz"
    make_tgz(path, HOSTILE[case])
    before = all_paths(tmp_path)
    dest = work / "dest"
    with pytest.raises(UnsafeArchive):
        extract(path, dest, max_bytes=1000)
    assert not dest.exists()
    assert all_paths(tmp_path) == before
    with pytest.raises(UnsafeArchive):
        scan_archive(path, max_bytes=1000)


def test_archive_changed_after_the_scan_is_discarded(tmp_path: Path, monkeypatch):
    """GNU tar extracts what it is fed, not what was scanned: the second hash is what ties the two."""
    scanned = gzip.compress(tar_bytes([member("f", data=b"scanned")]), compresslevel=0, mtime=0)
    swapped = gzip.compress(tar_bytes([member("f", data=b"swapped")]), compresslevel=0, mtime=0)
    assert len(scanned) == len(swapped) and scanned != swapped
    path = tmp_path / "a.tar.gz"
    path.write_bytes(scanned)
    real_scan = archive_extract._scan

    def scan_then_rewrite(*args, **kwargs):
        report = real_scan(*args, **kwargs)
        with open(path, "r+b") as f:  # same inode, same size: only the content differs
            f.write(swapped)
        return report

    monkeypatch.setattr(archive_extract, "_scan", scan_then_rewrite)
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="changed during extraction"):
        extract_archive(path, dest, expected_sha256=hashlib.sha256(scanned).hexdigest(),
                        expected_size=len(scanned), max_bytes=MiB)
    assert not dest.exists()


def test_member_limit(tmp_path: Path):
    path = tmp_path / "many.tar.gz"
    make_tgz(path, [member(f"f{i}") for i in range(5)])
    assert scan_archive(path, max_bytes=10, max_members=5).members == 5
    with pytest.raises(UnsafeArchive, match="more than 4 members"):
        scan_archive(path, max_bytes=10, max_members=4)


def test_benign_tricky_archive_is_accepted(tmp_path: Path):
    """Things that look odd but stay inside: '..' inside a symlink, implied parents, repeated dirs."""
    path = tmp_path / "ok.tar.gz"
    make_tgz(path, [
        member("./d", tarfile.DIRTYPE, mode=0o750),
        member("d/e/f", data=b"f"),
        member("d/up", tarfile.SYMTYPE, link="../d/e/f"),
        member("d/dangling", tarfile.SYMTYPE, link="nowhere"),
        member("d", tarfile.DIRTYPE, mode=0o700),
        member("d/h", tarfile.LNKTYPE, link="d/e/f"),
    ])
    dest = tmp_path / "out"
    extract(path, dest)
    assert (dest / "d" / "up").read_bytes() == b"f"
    assert (dest / "d" / "h").stat().st_ino == (dest / "d" / "e" / "f").stat().st_ino
    # A repeated directory entry: GNU tar applies the first mode. It never writes such archives
    # itself; either way the mode comes from the archive.
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o750


# --------------------------------------------------------------------------- proc.stream


def test_stream_feeds_stdin_and_reads_stdout_at_once():
    """Both ends piped with more than a pipe buffer each way: a single thread would deadlock."""
    data = os.urandom(3 * MiB)
    out = io.BytesIO()
    seen = []
    moved = proc.stream(["cat"], stdin=io.BytesIO(data), stdout=out, progress=seen.append, timeout=60)
    assert out.getvalue() == data
    assert moved == 2 * len(data) == seen[-1] and seen == sorted(seen)


def test_stream_takes_a_chunk_producer_and_a_callback():
    chunks = []
    proc.stream(["tr", "a-z", "A-Z"], stdin=(part for part in (b"abc", b"def")), stdout=chunks.append)
    assert b"".join(chunks) == b"ABCDEF"


def test_stream_child_that_stops_reading_is_judged_by_its_exit_status():
    out = io.BytesIO()
    proc.stream(["head", "-c", "3"], stdin=io.BytesIO(os.urandom(4 * MiB)), stdout=out)
    assert len(out.getvalue()) == 3
    with pytest.raises(CommandFailed) as err:
        proc.stream(["sh", "-c", "head -c 1 >/dev/null; echo refused >&2; exit 3"],
                    stdin=io.BytesIO(os.urandom(4 * MiB)))
    assert err.value.returncode == 3 and "refused" in err.value.message


def test_stream_keeps_the_tail_of_a_long_stderr():
    script = "i=0; while [ $i -lt 20000 ]; do echo noise $i >&2; i=$((i+1)); done; echo the-cause >&2; exit 2"
    with pytest.raises(CommandFailed) as err:
        proc.stream(["sh", "-c", script], stdout=lambda chunk: None)
    assert len(err.value.stderr) <= proc.STDERR_TAIL and err.value.stderr.endswith("the-cause\n")
    assert "the-cause" in err.value.message


def test_stream_kills_the_child_when_the_consumer_fails(tmp_path: Path):
    pid_file = tmp_path / "pid"

    def refuse(chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    started = time.monotonic()
    with pytest.raises(OSError) as err:  # the child would sleep on for a minute unless killed
        proc.stream(["sh", "-c", f"echo $$ > {pid_file}; head -c {2 * MiB} /dev/zero; exec sleep 60"],
                    stdout=refuse)
    assert err.value.errno == errno.ENOSPC and not isinstance(err.value, CommandFailed)
    assert time.monotonic() - started < 30
    assert not Path(f"/proc/{pid_file.read_text().strip()}").exists()


def test_stream_missing_command_is_one_clear_line():
    with pytest.raises(RollbackError, match="no-such-command-here: command not found"):
        proc.stream(["no-such-command-here"], stdout=lambda chunk: None)


# --------------------------------------------------------------------------- fsutil


def test_atomic_write_and_sha256_file(tmp_path: Path):
    target = tmp_path / "doc.json"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two", mode=0o640)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["doc.json"]
    calls = []
    assert sha256_file(target, chunk=1, progress=calls.append) == (hashlib.sha256(b"two").hexdigest(), 3)
    assert calls == [1, 2, 3]


def test_atomic_write_cleans_up_temp_on_failure(tmp_path: Path):
    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "doc", "not bytes")  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


def test_fsync_tree_skips_fifos_and_symlinks(tmp_path: Path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("f")
    os.mkfifo(tmp_path / "d" / "fifo")  # opening it for reading would block forever
    os.symlink("/nonexistent", tmp_path / "d" / "dangling")
    os.symlink("d", tmp_path / "dirlink")
    fsync_tree(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_tree(tmp_path / "missing")
