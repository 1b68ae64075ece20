"""Atomic file and directory writes: an interrupted run never leaves a half-written artifact.

Files go to a temporary sibling and are renamed into place (os.replace is atomic on POSIX);
directories are assembled under a temporary sibling and swapped in at the end.

A process killed with SIGKILL cannot clean up after itself, so temporary siblings carry the
writer's pid (`.<name>.<pid>.<random>.tmp`, `.<name>.old-<pid>`): the next writer of the same path
removes those of dead processes (pids of this host: not for dirs shared with other machines), and
`recover_dir` puts back a directory whose replacement was interrupted between its two renames (the
old, complete one is restored).

Two rules every writer of an output directory follows before any work:
- `check_apart(out, inputs)`: the output never equals, contains or lies inside one of its inputs
  (replacing the output must never delete what it was made from);
- `output_lock(out)`: one writer per output, an advisory lock (flock) on a `.<name>.lock` sibling
  held for the whole run; the kernel drops it when its holder dies, so a killed run's lock is
  taken over by the next writer, which removes the file when it is done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["OutputLocked", "atomic_dir", "atomic_write_bytes", "atomic_write_text", "check_apart", "output_lock",
           "recover_dir"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _owner(sibling: Path, name: str, marker: str) -> int | None:
    """The pid in `.<name><marker><pid>…`, or None when the name is not ours."""
    rest = sibling.name[len(name) + 1 + len(marker):]
    if marker == ".":  # `<pid>.<mkstemp's random part, no dots>.tmp`
        parts = rest.split(".")
        rest = parts[0] if len(parts) == 3 and parts[2] == "tmp" else ""
    return int(rest) if rest.isdigit() else None


def _stale(path: Path, marker: str, suffix: str = "") -> list[Path]:
    """Temporary siblings of `path` left by processes that no longer run."""
    prefix = f".{path.name}{marker}"
    if not path.parent.is_dir():
        return []
    out = []
    for sibling in path.parent.iterdir():
        if sibling.name.startswith(prefix) and sibling.name.endswith(suffix):
            pid = _owner(sibling, path.name, marker)
            if pid is not None and pid != os.getpid() and not _pid_alive(pid):
                out.append(sibling)
    return sorted(out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover_dir(path: str | Path) -> Path:
    """Undo what a killed writer of directory `path` left: restore `path` from its `.old-<pid>`
    twin when the swap stopped between its renames, and drop temporaries of dead writers."""
    path = Path(path)
    old = _stale(path, ".old-")
    if old and not path.exists():
        os.replace(old.pop(), path)
    for stale in old + _stale(path, ".", ".tmp"):
        _remove(stale)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale(path, ".", ".tmp"):
        _remove(stale)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | Path, overwrite: bool = False):
    """Yield a temporary directory that becomes `path` only if the block completes.

    With overwrite=False an existing non-empty `path` (or a file at `path`) is an error
    (FileExistsError).
    """
    path = recover_dir(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"output path {path} exists and is not a directory")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"output directory {path} exists and is not empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def check_apart(out: str | Path, inputs: dict[str, str | Path | None], flag: str = "--out") -> None:
    """ValueError (one line) when the output path equals, contains or lies inside one of `inputs`
    ({what: path}; None entries are skipped). Paths are compared with symlinks resolved, so a link to
    the model dir is the model dir."""
    target = _real(out)
    for what, path in inputs.items():
        if path is None:
            continue
        source = _real(path)
        if target == source:
            relation = "is"
        elif source in target.parents:
            relation = "lies inside"
        elif target in source.parents:
            relation = "contains"
        else:
            continue
        raise ValueError(f"{flag} {out} {relation} the {what} {path}: an output never replaces its own input; "
                         f"choose a {flag} apart from it")


class OutputLocked(FileExistsError):
    """Another live process is writing the same output."""


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


@contextlib.contextmanager
def output_lock(out: str | Path):
    """Hold the advisory write lock of output `out` for the block.

    The loser of a race raises OutputLocked naming the holder's pid. The lock file lives beside `out`
    (not inside: an atomic dir swap replaces `out` itself) and is removed on release.
    """
    out = _real(out)
    lock = _lock_path(out)
    for folder in (lock.parent, *lock.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"cannot write {out}: {folder} is a file, not a directory")
            break
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise OutputLocked(f"output {out} is being written by another process (pid {_holder(lock)}); "
                               f"wait for it to finish or choose another output") from None
        try:  # the holder we waited on may have removed the file: lock the one that is there now
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # before the unlock: a waiter then sees another inode and retries
        os.close(fd)


def _holder(lock: Path) -> str:
    """The pid the holder wrote (it writes just after locking: give it a moment)."""
    import time

    for _ in range(50):
        try:
            text = lock.read_text().strip()
        except OSError:
            return "unknown"
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"
