"""Output folders: safe names inside them, checks before any work, one writer at a time.

Every command that writes (``run``, ``heads``, ``compare``) goes through here before it loads a
model, so a folder it cannot write is reported in one line while nothing has been computed yet:

- ``short_name(name)``: what titles and default folders call a model: never a full path;
- ``slug(name)``: a folder name for a model name that can never leave the output folder;
- ``check_output_folder(out)``: creatable, a folder (not a file), writable, with room to write;
- ``output_lock(out)``: one writer per folder; a second gets a ``FunnelError``; the lock of a
  killed process is taken over (an OS file lock dies with its process);
- ``temporary_beside(path)``: the temporary an atomic writer fills before renaming it to ``path``;
- ``remove_temporaries(folder)``: the temporaries a killed writer left behind, whatever their name;
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
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from funnel_tl.errors import FunnelError

LOCK_NAME = ".funnel-tl.lock"
# Every temporary an atomic writer makes is ``.NAME.<random>`` + this (``temporary_beside``), so a
# killed writer's leftovers are found whatever file it was writing.
TEMPORARY_SUFFIX = ".funnel-tl.tmp"
# The names earlier versions gave their temporaries (``.NAME.<random>.tmp``, ``.funnel.<random>.png``).
OUTPUT_NAMES = (
    "results.json",
    "funnel.html",
    "heads.json",
    "heads.html",
    "compare.json",
    "compare.html",
    "positions.html",
    "plotly.min.js",
)
# results.json of thousands of prompts is a few MB and funnel.html carries plotly.js (~5 MB):
# less free space than this and the write after a long measurement would fail, so it is refused first.
MIN_FREE_BYTES = 32 * 2**20
# Most filesystems cap one name at 255 bytes; long labels keep a readable head and a hash.
MAX_SLUG_LENGTH = 120


# A checkpoint folder named by its step: ``run/step1000`` is called ``run@step1000``.
_STEP_FOLDER = re.compile(r"^(?:step|checkpoint)[-_]?(\d+)$")
# Model files named by their file: the extension says nothing a reader needs.
_MODEL_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin")


def short_name(name: str) -> str:
    """What titles, the printed analysis and default output folders call a model: its name when
    that is a bundled or hub name (``EleutherAI/pythia-70m``), the last part of it when it is a
    path (a folder or model file: ``/tmp/smollm2-hf`` is ``smollm2-hf``; ``.../run/step1000``
    is ``run@step1000``; a ``.gguf`` file loses its extension). results.json keeps the full name.

    >>> short_name("/tmp/smollm2-hf/"), short_name("EleutherAI/pythia-70m"), short_name("nano-8l")
    ('smollm2-hf', 'EleutherAI/pythia-70m', 'nano-8l')
    >>> short_name("~/runs/pythia/checkpoint-1000"), short_name("/cache/SmolLM2-135M-Instruct.Q4_1.gguf")
    ('pythia@step1000', 'SmolLM2-135M-Instruct.Q4_1')
    """
    text = str(name).strip()
    trimmed = text.rstrip("/\\") or text
    looks_like_path = (
        trimmed.startswith(("/", "./", "../", "~", "\\"))
        or trimmed.count("/") > 1
        or (os.sep != "/" and os.sep in trimmed)
        or re.match(r"^[A-Za-z]:[\\/]", trimmed) is not None
        or trimmed.lower().endswith(_MODEL_FILE_SUFFIXES)
        or os.path.isdir(os.path.expanduser(trimmed))
    )
    if not looks_like_path:
        return trimmed
    parts = [part for part in re.split(r"[\\/]+", trimmed) if part not in ("", ".", "~")]
    if not parts:
        return trimmed
    last = parts[-1]
    for suffix in _MODEL_FILE_SUFFIXES:
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            last = last[: -len(suffix)]
    step = _STEP_FOLDER.match(last)
    if step and len(parts) > 1 and parts[-2] != "..":
        return f"{parts[-2]}@step{step.group(1)}"
    return last


def check_label(label) -> str | None:
    """A ``label=`` (``--label``) that names a model in titles, results and the default folder:
    None (name it by the model), or text of one line.

    >>> check_label("SmolLM2-135M (Q4_1)")
    'SmolLM2-135M (Q4_1)'
    """
    if label is None:
        return None
    if not isinstance(label, str) or not label.strip() or "\n" in label or "\r" in label:
        raise FunnelError(f"a label names the model in one line of text, got {label!r}")
    return label.strip()


def slug(name: str) -> str:
    """A folder name for a model name, never a path out of the folder it is put in.

    ``/`` becomes ``__``, anything outside ``[A-Za-z0-9._-]`` becomes ``_``; a name of dots alone
    (``.``, ``..``) becomes underscores, and a very long name is cut and given a hash.

    >>> slug("EleutherAI/pythia-6.9b")
    'EleutherAI__pythia-6.9b'
    >>> [slug(name) for name in ("..", ".", "/abs/dir", "a/../b", "", "./ckpts@step0")]
    ['__', '_', 'abs__dir', 'a__..__b', 'model', '___ckpts_step0']
    """
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip("/").replace("/", "__"))
    if set(text) <= {"."}:  # "", "." and ".." name the folder itself or its parent
        text = "_" * len(text) or "model"
    elif text.startswith("."):  # never a hidden folder (``./ckpts@step0`` once made ``.__ckpts_step0``)
        text = "_" + text[1:]
    if len(text) > MAX_SLUG_LENGTH:
        digest = hashlib.sha256(str(name).encode("utf-8")).hexdigest()[:12]
        text = f"{text[: MAX_SLUG_LENGTH - 13]}-{digest}"
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
        descriptor, probe = temporary_beside(out / "probe")  # a fresh name: never through a planted link
        try:
            os.write(descriptor, b"x")
        finally:
            os.close(descriptor)
            os.unlink(probe)
    except OSError as error:
        raise FunnelError(
            f"cannot write to {what} {out}: {describe_os_error(error)}: choose another folder or fix its permissions"
        ) from None
    free = shutil.disk_usage(out).free
    if free < MIN_FREE_BYTES:
        raise FunnelError(
            f"{what} {out} has only {free / 2**20:.1f} MiB free; results and figures need about "
            f"{MIN_FREE_BYTES // 2**20} MiB: free some space or choose another folder"
        )
    return out


def describe_os_error(error: OSError) -> str:
    """An OSError in a few words: ``disk full``, ``read-only file system``, ``permission denied``."""
    words: dict[int | None, str] = {
        errno.ENOSPC: "disk full",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EDQUOT: "disk quota exceeded",
        errno.EEXIST: "a file is in the way",
        errno.ENOTDIR: "a file is in the way",
    }
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
        import fcntl  # imported on use: POSIX only (Windows takes no lock)
    except ImportError:  # pragma: no cover - Windows
        yield out
        return
    path = out / LOCK_NAME
    handle = _open_lock_file(path)
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
            raise FunnelError(
                f"{out} is in use by another funnel-tl ({owner}): wait for it to finish, or give another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield out
    finally:
        handle.close()  # releases the lock; the file stays, harmless and reused


def _open_lock_file(path: Path):
    """``path`` opened for reading and writing, created if missing, never through a symbolic link
    (``O_NOFOLLOW``: a planted link would have the lock truncate the file it points to) and only
    when it is a plain file of its own (not a FIFO, which would block, nor a hard link to another)."""
    flags = (
        os.O_RDWR
        | os.O_CREAT
        | getattr(os, "O_NOFOLLOW", 0)
        | getattr(os, "O_NONBLOCK", 0)
        | getattr(os, "O_CLOEXEC", 0)
    )
    try:
        descriptor = os.open(path, flags, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP or path.is_symlink():
            raise FunnelError(
                f"the lock file {path} is a symbolic link: funnel-tl does not write through it; "
                "remove it, or give another --out"
            ) from None
        raise FunnelError(f"cannot create the lock file {path}: {describe_os_error(error)}") from None
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(descriptor)
        what = "a hard link to another file" if stat.S_ISREG(info.st_mode) else "not a plain file"
        raise FunnelError(
            f"the lock file {path} is {what}: funnel-tl does not write through it; remove it, or give another --out"
        )
    return os.fdopen(descriptor, "r+", encoding="utf-8")


def temporary_beside(path: str | os.PathLike) -> tuple[int, str]:
    """``(descriptor, name)`` of a new temporary file beside ``path``, to be renamed onto it.

    Created exclusively (``mkstemp``: a fresh name, no link followed) and named
    ``.NAME.<random>.funnel-tl.tmp``, so that ``remove_temporaries`` finds what a killed writer left.
    """
    path = Path(path)
    return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder``; return them.

    Only the names funnel_tl's own atomic writers use (``temporary_beside``'s, and those of
    earlier versions: ``.results.json.*.tmp``, ``.funnel.*.png``, …): the folder may hold other
    files. Call it with the folder's lock held.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        patterns = (
            [f".*{TEMPORARY_SUFFIX}"]
            + [f".{name}.*.tmp" for name in OUTPUT_NAMES]
            + [".funnel.*.png", ".funnel-tl-probe.*.tmp"]
        )
        for pattern in patterns:
            for stale in folder.glob(pattern):
                if stale not in removed:
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
