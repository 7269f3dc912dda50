"""Run external commands with argument lists, timeouts and captured stderr.

`run` / `output` hold a short command's output in memory; `stream` is for a child whose input or
output is too large for that (tar, pg_dump): it moves the bytes chunk by chunk. `run_both` runs two
such pieces of work at once (a snapshot's dump and archive); `SharedSink` lets them report progress.
"""

from __future__ import annotations

import io
import os
import subprocess
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Mapping, Sequence, Union

from .errors import CommandFailed, RollbackError

CHUNK = 1 << 20
STDERR_TAIL = 64 * 1024  # what of a streaming child's stderr goes into CommandFailed

# Where a streaming child's stdout goes: a writer (anything with .write) or a function taking each chunk.
Output = Union[Callable[[bytes], object], BinaryIO]
# What a streaming child reads on stdin: a reader (anything with .read) or an iterable of byte chunks.
Input = Union[BinaryIO, Iterable[bytes]]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: ours plus `extra` (secrets travel here, never in argv)."""
    env = dict(os.environ)
    env.update(extra or {})
    env.setdefault("LC_ALL", "C.UTF-8")
    return env


def _not_found(argv: Sequence[str]) -> RollbackError:
    return RollbackError(f"{argv[0]}: command not found (is it installed and on PATH?)")


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
        timeout: float | None = 600, stdin_data: bytes | None = None) -> subprocess.CompletedProcess:
    """Run argv; raise CommandFailed with stderr on a non-zero exit, RollbackError on timeout."""
    argv = [str(a) for a in argv]
    try:
        done = subprocess.run(argv, env=child_env(env), cwd=cwd, input=stdin_data, capture_output=True,
                              timeout=timeout, check=False)
    except FileNotFoundError:
        raise _not_found(argv) from None
    except subprocess.TimeoutExpired:
        raise RollbackError(f"{argv[0]} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise CommandFailed(argv, done.returncode, done.stderr.decode("utf-8", "replace"))
    return done


def output(argv: Sequence[str], **kwargs) -> str:
    return run(argv, **kwargs).stdout.decode("utf-8", "replace").strip()


def stream(argv: Sequence[str], *, stdout: Output | None = None, stdin: Input | None = None,
           progress: Callable[[int], None] | None = None, env: Mapping[str, str] | None = None,
           cwd: Path | None = None, timeout: float | None = None) -> int:
    """Run argv, passing each chunk of its stdout to `stdout` and feeding `stdin` to it.

    Without `stdout` the child's output is discarded; without `stdin` it reads an empty input.
    `progress` receives the running count of bytes moved (read from stdout plus fed to stdin), which
    is also the return value. stderr goes to a temp file (a pipe nobody reads could fill up and block
    the child); its last STDERR_TAIL bytes go into the CommandFailed raised on a non-zero exit, with
    "timed out after N s" when `timeout` (seconds of wall clock) killed the child. A child that stops
    reading stdin early is not an error by itself: its exit status decides. Any exception raised while
    streaming (by `stdout`, `stdin`, `progress`, an interrupt) kills the child and waits for it first.
    """
    argv = [str(a) for a in argv]
    write = None if stdout is None else (stdout if callable(stdout) else stdout.write)
    moved = _Counter(progress)
    with tempfile.TemporaryFile() as errors:
        try:
            child = subprocess.Popen(argv, stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                                     stdout=subprocess.DEVNULL if write is None else subprocess.PIPE,
                                     stderr=errors, env=child_env(env), cwd=cwd)
        except FileNotFoundError:
            raise _not_found(argv) from None
        expired = threading.Event()
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, lambda: (expired.set(), child.kill()))
            timer.daemon = True
            timer.start()
        feeder = None
        try:
            if stdin is not None and write is not None:
                # Both ends piped: feeding and reading in one thread could deadlock on full pipes.
                feeder = _Feeder(child.stdin, stdin, moved)
                feeder.start()
            elif stdin is not None:
                _feed(child.stdin, stdin, moved)
            if write is not None:
                while chunk := child.stdout.read(CHUNK):
                    write(chunk)
                    moved.add(len(chunk))
            if feeder is not None:
                feeder.join()
                feeder.reraise()
        except BaseException:
            child.kill()
            raise
        finally:
            if feeder is not None:
                feeder.join()  # the child is gone or done: its writes end
            for pipe in (child.stdin, child.stdout):
                if pipe is not None:
                    with suppress(OSError):  # a flush into a closed pipe; the exit status tells
                        pipe.close()
            returncode = child.wait()
            if timer is not None:
                timer.cancel()
        if returncode != 0:
            message = _tail(errors)
            if expired.is_set():
                message += f"\ntimed out after {timeout:g}s"
            raise CommandFailed(argv, returncode, message)
    return moved.total


class _Counter:
    """Running byte count shared by the reading and the feeding side, reported to `progress`."""

    def __init__(self, progress: Callable[[int], None] | None):
        self._progress = progress
        self._lock = threading.Lock()
        self.total = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.total += n
            if self._progress is not None:
                self._progress(self.total)


def _feed(pipe: BinaryIO, source: Input, moved: _Counter) -> None:
    chunks = iter(lambda: source.read(CHUNK), b"") if hasattr(source, "read") else source
    try:
        for chunk in chunks:
            pipe.write(chunk)
            moved.add(len(chunk))
        pipe.close()
    except BrokenPipeError:
        pass  # the child stopped reading; whether that is a failure is for its exit status to say


class _Feeder(threading.Thread):
    """Feeds stdin while the caller's thread reads stdout; keeps the error for that thread to raise."""

    def __init__(self, pipe: BinaryIO, source: Input, moved: _Counter):
        super().__init__(daemon=True)
        self._work = (pipe, source, moved)
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            _feed(*self._work)
        except BaseException as exc:  # raised again in the caller's thread
            self._error = exc

    def reraise(self) -> None:
        if self._error is not None:
            raise self._error


def _tail(f: BinaryIO) -> str:
    """The last STDERR_TAIL bytes of a file, decoded leniently."""
    size = f.seek(0, io.SEEK_END)
    f.seek(max(0, size - STDERR_TAIL))
    return f.read().decode("utf-8", "replace")


class Cancelled(RollbackError):
    """Raised by a `run_both` check when the other half has failed: stop now."""


def run_both(first: Callable[[Callable[[], None]], object], second: Callable[[Callable[[], None]], object]) -> tuple:
    """Run first(check) in a thread and second(check) in this one; return (first's, second's) result.

    Each is given `check`, to call between chunks (e.g. from a `stream` progress callback): it raises
    Cancelled once the other has failed, so a failed half stops its sibling's child within a chunk.
    Nothing returns before both have ended (neither still writes after a failure); the first real
    error is raised, not the Cancelled it caused. An interrupt in this thread cancels the other too."""
    failed = threading.Event()

    def check() -> None:
        if failed.is_set():
            raise Cancelled("stopped: the concurrent part failed")

    box: dict[str, object] = {}

    def runner() -> None:
        try:
            box["result"] = first(check)
        except BaseException as exc:  # raised again in the caller's thread
            box["error"] = exc
            failed.set()

    thread = threading.Thread(target=runner, name="run_both", daemon=True)
    thread.start()
    try:
        second_result = second(check)
    except BaseException as exc:
        failed.set()
        thread.join()
        first_error = box.get("error")
        if isinstance(exc, Cancelled) and first_error is not None:
            raise first_error from None
        raise
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"], second_result


class SharedSink:
    """A progress sink two threads can share: calls are serialised, and each step's reports are thinned
    to one per `min_interval` (the last of a step, done == total, always passes)."""

    def __init__(self, sink: Callable[[str, int, int, str], None] | None, min_interval: float = 0.2):
        self._sink, self._interval = sink, min_interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def __call__(self, step: str, done: int, total: int, message: str) -> None:
        if self._sink is None:
            return
        with self._lock:
            now = time.monotonic()
            if done < total and now - self._last.get(step, -1e9) < self._interval:
                return
            self._last[step] = now
            self._sink(step, done, total, message)
