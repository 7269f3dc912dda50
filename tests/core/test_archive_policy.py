"""The member policy on its own: plain member records in, a verdict out; no archive, no disk, no tar."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass

import pytest

from rollback.archive.policy import DIRECTORY, FILE, HARDLINK, MAX_DEPTH, SYMLINK, MemberPolicy
from rollback.errors import UnsafeArchive

REG, DIR, SYM, LNK = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE


@dataclass(frozen=True)
class Member:
    """What the policy reads of a tarfile.TarInfo."""

    name: str
    type: bytes = REG
    mode: int = 0o644
    size: int = 1
    linkname: str = ""


def d(name: str, mode: int = 0o755) -> Member:
    return Member(name, DIR, mode, 0)


def sym(name: str, target: str) -> Member:
    return Member(name, SYM, 0o777, 0, target)


def hard(name: str, target: str) -> Member:
    return Member(name, LNK, 0o644, 0, target)


def deep(levels: int) -> str:
    return "/".join(["a"] * levels)


LIMITS = {"max_bytes": 1000, "max_members": 50, "max_name_len": 600}

# (case, members, what refuses: "admit" = the last member, "finish" = the whole-archive check, reason)
REFUSED = [
    # names
    ("empty name", [Member("")], "admit", "empty name"),
    ("NUL byte", [Member("a\0b")], "admit", "NUL byte in name"),
    ("unencodable name", [Member("bad\ud800")], "admit", "name cannot be encoded"),
    ("long name", [Member("n" * 601)], "admit", "name longer than 600 bytes"),
    ("long in bytes, short in characters", [Member("é" * 301)], "admit", "name longer than 600 bytes"),
    ("absolute", [Member("/etc/passwd")], "admit", "absolute path"),
    ("absolute dot-slash-less root", [Member("/")], "admit", "absolute path"),
    ("backslash absolute", [Member("\\windows\\system32")], "admit", "absolute path"),
    ("drive letter", [Member("C:evil")], "admit", "absolute path"),
    ("drive letter lower case", [Member("c:/evil")], "admit", "absolute path"),
    ("dotdot", [Member("../evil")], "admit", "'..' component"),
    ("nested dotdot", [Member("a/../../x")], "admit", "'..' component"),
    ("trailing dotdot", [d("a"), d("a/..")], "admit", "'..' component"),
    # member types
    ("character device", [Member("null", tarfile.CHRTYPE)], "admit", "unsupported member type: character device"),
    ("block device", [Member("sda", tarfile.BLKTYPE)], "admit", "unsupported member type: block device"),
    ("FIFO", [Member("fifo", tarfile.FIFOTYPE)], "admit", "unsupported member type: FIFO"),
    ("contiguous file", [Member("c", tarfile.CONTTYPE)], "admit", "unsupported member type: contiguous file"),
    ("sparse file", [Member("s", tarfile.GNUTYPE_SPARSE)], "admit", "unsupported member type: sparse file"),
    ("unknown type", [Member("x", b"Z")], "admit", "unsupported member type: type b'Z'"),
    ("root is a file", [Member(".")], "admit", "the archive root must be a directory"),
    ("root is a symlink", [sym("./", "elsewhere")], "admit", "the archive root must be a directory"),
    # depth
    ("too deep", [d(deep(MAX_DEPTH + 1))], "admit", f"nested more than {MAX_DEPTH} folders deep"),
    # set-id bits
    ("setuid file", [Member("suid", mode=0o4755)], "admit", r"set-user/group-ID mode 0o4755 on a file"),
    ("setgid file", [Member("sgid", mode=0o2755)], "admit", r"set-user/group-ID mode 0o2755 on a file"),
    ("setuid directory", [d("sd", mode=0o4755)], "admit", "set-user/group-ID mode 0o4755 on a directory"),
    ("setgid symlink", [Member("s", SYM, 0o2777, 0, "t")], "admit", "set-user/group-ID mode 0o2777 on a symlink"),
    ("setuid hardlink", [Member("f"), Member("h", LNK, 0o4755, 0, "f")], "admit",
     "set-user/group-ID mode 0o4755 on a hardlink"),
    # parents
    ("through an archived symlink", [d("real"), sym("link", "real"), Member("link/x")], "admit",
     "path goes through the archived symlink 'link'"),
    ("through a dangling symlink", [sym("gone", "missing"), Member("gone/x")], "admit",
     "path goes through the archived symlink 'gone'"),
    ("under a file", [Member("f"), Member("f/g")], "admit", "parent 'f' is not a directory"),
    ("under a hardlink", [Member("f"), hard("h", "f"), Member("h/g")], "admit", "parent 'h' is not a directory"),
    # duplicates: only a directory may be repeated as a directory
    ("file after file", [Member("f"), Member("f")], "admit", "duplicate member would replace a file"),
    ("file after directory", [d("d"), Member("d")], "admit", "duplicate member would replace a directory"),
    ("file after implied directory", [Member("d/f"), Member("d")], "admit",
     "duplicate member would replace a directory"),
    ("directory after file", [Member("f"), d("f")], "admit", "duplicate member would replace a file"),
    ("symlink after directory", [Member("d/f"), sym("d", ".")], "admit",
     "duplicate member would replace a directory"),
    ("file after symlink", [sym("s", "t"), Member("s")], "admit", "duplicate member would replace a symlink"),
    ("same path spelled differently", [Member("./a//b"), Member("a/b")], "admit", "duplicate member"),
    # symlink targets
    ("symlink to an absolute path", [sym("etc", "/etc")], "admit", "symlink target '/etc': absolute path"),
    ("symlink to a drive", [sym("w", "C:/Windows")], "admit", "absolute path"),
    ("symlink with an empty target", [sym("s", "")], "admit", "symlink target '': empty name"),
    ("symlink with a NUL", [sym("s", "a\0b")], "admit", "NUL byte in name"),
    ("symlink with a long target", [sym("s", "t" * 601)], "admit", "name longer than 600 bytes"),
    ("symlink up from the root", [sym("up", "..")], "admit", "points outside the archive"),
    ("symlink up from a folder", [d("sub"), sym("sub/up", "../..")], "admit", "points outside the archive"),
    ("symlink down then too far up", [sym("s", "a/../../x")], "admit", "points outside the archive"),
    # symlinks that escape only through other symlinks: seen when the whole archive is known
    ("symlink chain escape", [sym("b", "a/.."), sym("a", ".")], "finish", "points outside the archive"),
    ("symlink chain escape, other order", [sym("a", "."), sym("b", "a/..")], "finish", "points outside"),
    ("symlink through a deeper symlink", [d("x"), sym("x/l", ".."), sym("y", "x/l/..")], "finish",
     "points outside the archive"),
    ("symlink loop", [sym("a", "b"), sym("b", "a")], "finish", "loops or chains too many symlinks"),
    ("symlink to itself", [sym("self", "self")], "finish", "loops or chains too many symlinks"),
    # hard links
    ("hardlink to an absolute path", [hard("passwd", "/etc/passwd")], "admit",
     "hardlink target '/etc/passwd': absolute path"),
    ("hardlink with dotdot", [hard("h", "../x")], "admit", "hardlink target '../x': '..' component"),
    ("hardlink with an empty target", [hard("h", "")], "admit", "hardlink target '': empty name"),
    ("hardlink to nothing", [hard("h", "nothing")], "admit", "is not an earlier regular file"),
    ("hardlink to a directory", [d("d"), hard("h", "d")], "admit", "is not an earlier regular file"),
    ("hardlink to an implied directory", [Member("d/f"), hard("h", "d")], "admit", "is not an earlier regular"),
    ("hardlink to a symlink", [sym("s", "f"), hard("h", "s")], "admit", "is not an earlier regular file"),
    ("hardlink to the root", [hard("h", ".")], "admit", "is not an earlier regular file"),
    # sizes and counts
    ("negative size", [Member("f", size=-1)], "admit", "negative size"),
    ("one file beyond the recorded size", [Member("big", size=1001)], "admit",
     "regular files exceed the limit of 1000 bytes"),
    ("files together beyond the recorded size", [Member("a", size=600), Member("b", size=401)], "admit",
     "regular files exceed the limit of 1000 bytes"),
    ("too many members", [d(f"d{i}") for i in range(51)], "admit", "more than 50 members"),
]

ACCEPTED = [
    ("root directory and dot-slash names", [d("."), d("./a"), Member("./a/f")]),
    ("implied parents", [Member("a/b/c/f")]),
    ("directory repeated", [d("d", 0o750), Member("d/f"), d("d", 0o700)]),
    ("setgid directory", [d("shared", 0o2775), Member("shared/f")]),
    ("dotdot inside a symlink that stays inside", [d("a"), Member("a/f"), sym("a/up", "../a/f")]),
    ("symlink to the root itself", [d("a"), sym("a/root", "..")]),
    ("dangling symlink", [sym("nowhere", "missing/file")]),
    ("symlink chain that stays inside", [d("x"), sym("x/l", "."), sym("y", "x/l/l/l")]),
    ("hardlink to a file", [Member("d/f"), hard("d/h", "d/f")]),
    ("hardlink to a hardlink", [Member("f"), hard("h1", "f"), hard("h2", "h1")]),
    ("hardlink spelled with dot-slash", [Member("./f"), hard("h", "./f")]),
    ("names as long as allowed", [Member("n" * 600), sym("s", "t" * 600)]),
    ("exactly the deepest allowed", [d(deep(MAX_DEPTH))]),
    ("files exactly at the recorded size", [Member("a", size=600), Member("b", size=400), Member("empty", size=0)]),
    ("exactly as many members as allowed", [d(f"d{i}") for i in range(50)]),
    ("drive-letter lookalike deeper down", [Member("sub/C:x")]),
    ("newline in a name", [Member("odd\nname")]),
]


@pytest.mark.parametrize("members, stage, reason", [case[1:] for case in REFUSED], ids=[case[0] for case in REFUSED])
def test_refused(members: list[Member], stage: str, reason: str):
    policy = MemberPolicy(**LIMITS)
    admitted = members[:-1] if stage == "admit" else members
    for member in admitted:
        policy.admit(member)
    with pytest.raises(UnsafeArchive, match=reason) as err:
        if stage == "admit":
            policy.admit(members[-1])
        else:
            policy.finish()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("members", [case[1] for case in ACCEPTED], ids=[case[0] for case in ACCEPTED])
def test_accepted(members: list[Member]):
    policy = MemberPolicy(**LIMITS)
    for member in members:
        policy.admit(member)
    policy.finish()
    assert policy.members == len(members)
    assert policy.total_bytes == sum(m.size for m in members if m.type == REG)


@pytest.mark.parametrize("member, parts, kind", [
    (d("."), (), DIRECTORY),
    (d("./"), (), DIRECTORY),
    (Member("./a//b/./c"), ("a", "b", "c"), FILE),
    (Member("f", tarfile.AREGTYPE), ("f",), FILE),
    (sym("s", "t"), ("s",), SYMLINK),
])
def test_admit_returns_the_normalised_path_and_kind(member: Member, parts: tuple, kind: str):
    assert MemberPolicy(**LIMITS).admit(member) == (parts, kind)


def test_hardlink_kind():
    policy = MemberPolicy(**LIMITS)
    policy.admit(Member("f"))
    assert policy.admit(hard("h", "f")) == (("h",), HARDLINK)


def test_refusal_names_the_member_on_one_printable_line():
    policy = MemberPolicy(**LIMITS)
    with pytest.raises(UnsafeArchive) as err:
        policy.admit(sym("bad\x1b[31mname\n", "/etc\nshadow"))
    message = str(err.value)
    assert message.startswith("bad\\x1b[31mname\\n: symlink target")
    assert message.isprintable()


def test_long_names_are_cut_in_messages():
    with pytest.raises(UnsafeArchive) as err:
        MemberPolicy(max_bytes=10).admit(Member("x" * 5000))
    assert len(str(err.value)) < 300 and "name longer than 4096 bytes" in str(err.value)


def test_default_limits():
    policy = MemberPolicy(max_bytes=10)
    assert (policy.max_members, policy.max_name_len) == (1_000_000, 4096)
    policy.admit(Member("n" * 4096, size=0))
    with pytest.raises(UnsafeArchive, match="name longer than 4096 bytes"):
        policy.admit(Member("m" * 4097, size=0))
