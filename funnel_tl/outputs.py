"""Output folders: safe names inside them, checks before any work, one writer at a time.

Every command that writes (``run``, ``heads``, ``compare``) goes through here before it loads a
model, so a folder it cannot write is reported in one line while nothing has been computed yet:

- ``slug(name)``: a folder name for a model name that can never leave the output folder;
- ``check_output_folder(out)``: creatable, a folder (not a file), writable, with room to write;
- ``output_lock(out)``: one writer per folder; a second gets a ``FunnelError``; the lock of a
  killed process is taken over (an OS file lock dies with its process);
- ``remove_temporaries(folder)``: the ``.NAME.*.tmp`` files a killed writer left behind;
- ``claim_output(out)``: the three above in order, for a command's whole run;
- ``save_elsewhere(save, name)``: a measurement the folder cannot take goes to a temporary folder.

A leaf module: it imports nothing else of funnel_tl but ``errors``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import FunnelError

LOCK_NAME = ".funnel-tl.lock"
# Names the atomic writers (results.write_text_atomic, plots.write_png) use for their temporaries.
OUTPUT_NAMES = ("results.json", "funnel.html", "heads.json", "heads.html", "compare.json", "compare.html",
                "effects.json", "effects.html")
# results.json of thousands of prompts is a few MB and funnel.html carries plotly.js (~5 MB):
# less free space than this and the write after a long measurement would fail, so it is refused first.
MIN_FREE_BYTES = 32 * 2**20
# Most filesystems cap one name at 255 bytes; long labels keep a readable head and a hash.
MAX_SLUG_LENGTH = 120


def slug(name: str) -> str:
    """A folder name for a model name, never a path out of the folder it is put in.

    ``/`` becomes ``__``, anything outside ``[A-Za-z0-9._-]`` becomes ``_``; a name of dots alone
    (``.``, ``..``) becomes underscores, and a very long name is cut and given a hash.

    >>> slug("EleutherAI/pythia-6.9b")
    'EleutherAI__pythia-6.9b'
    >>> [slug(name) for name in ("..", ".", "/abs/dir", "a/../b", "")]
    ['__', '_', 'abs__dir', 'a__..__b', 'model']
    """
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip("/").replace("/", "__"))
    if set(text) <= {"."}:  # "", "." and ".." name the folder itself or its parent
        text = "_" * len(text) or "model"
    if len(text) > MAX_SLUG_LENGTH:
        digest = hashlib.sha256(str(name).encode("utf-8")).hexdigest()[:12]
        text = f"{text[:MAX_SLUG_LENGTH - 13]}-{digest}"
    return text


def check_output_folder(out: str | os.PathLike, what: str = "--out") -> Path:
    """Create ``out`` if needed and make sure files can be written there; return it.

    Raises ``FunnelError`` naming the problem (a file in the way, no permission, a read-only or
    full disk) before any model is loaded.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FunnelError(f"{what} {out} is a file, not a folder: give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".funnel-tl-probe.{os.getpid()}.tmp"
        probe.write_bytes(b"x")
        probe.unlink(missing_ok=True)
    except OSError as error:
        raise FunnelError(f"cannot write to {what} {out}: {describe_os_error(error)}: "
                          "choose another folder or fix its permissions") from None
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise FunnelError(f"{what} {out} has only {free / 2**20:.1f} MiB free; results and figures need about "
                          f"{MIN_FREE_BYTES // 2**20} MiB: free some space or choose another folder")
    return out


def describe_os_error(error: OSError) -> str:
    """An OSError in a few words: ``disk full``, ``read-only file system``, ``permission denied``."""
    words = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
             errno.EPERM: "permission denied", errno.EDQUOT: "disk quota exceeded",
             errno.EEXIST: "a file is in the way", errno.ENOTDIR: "a file is in the way"}
    return words.get(error.errno, error.strerror or type(error).__name__)


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold ``out/.funnel-tl.lock`` while writing into ``out``; a second writer gets a FunnelError.

    An OS lock (``flock``) is released by the kernel when its process dies, even by ``kill -9``,
    so a stale lock file is simply locked again by the next run. The file holds the owner's pid
    and host, for the message. Where ``fcntl`` is missing (Windows) no lock is taken.
    """
    out = Path(out)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield out
        return
    path = out / LOCK_NAME
    try:
        handle = open(path, "a+", encoding="utf-8")
    except OSError as error:
        raise FunnelError(f"cannot create the lock file {path}: {describe_os_error(error)}") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                # A filesystem without locks (some network and FUSE mounts): write unlocked, as before.
                yield out
                return
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise FunnelError(f"{out} is in use by another funnel-tl ({owner}): wait for it to finish, "
                              "or give another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield out
    finally:
        handle.close()  # releases the lock; the file stays, harmless and reused


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder``; return them.

    Only the names funnel_tl's own atomic writers use (``.results.json.*.tmp``, ``.funnel.*.png``,
    …): the folder may hold other files. Call it with the folder's lock held.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        patterns = [f".{name}.*.tmp" for name in OUTPUT_NAMES] + [".funnel.*.png", ".funnel-tl-probe.*.tmp"]
        for pattern in patterns:
            for stale in folder.glob(pattern):
                stale.unlink(missing_ok=True)
                removed.append(stale)
    return removed


@contextlib.contextmanager
def claim_output(out: str | os.PathLike, what: str = "--out") -> Iterator[Path]:
    """Check ``out`` (``check_output_folder``), hold its lock (``output_lock``) and clear what a
    killed writer left there (``remove_temporaries``): what every writing command does first."""
    out = check_output_folder(out, what)
    with output_lock(out):
        remove_temporaries(out)
        yield out


def save_elsewhere(save, name: str) -> Path | None:
    """``save(path)`` into a fresh temporary folder, for numbers the output folder could not take
    (full or read-only disk); the path written, or None when that fails too."""
    try:
        return save(Path(tempfile.mkdtemp(prefix="funnel-tl-rescue-")) / name)
    except OSError:
        return None
