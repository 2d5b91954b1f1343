"""What every results file shares: the prompts block, JSON read back and written atomically, pandas."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from funnel_tl.errors import FunnelError
from funnel_tl.prompts.sets import prompts_sha256
from funnel_tl.results.folders import temporary_beside


def subset_index(prompt_indices, n_prompts: int) -> np.ndarray:
    """The prompt indices of a ``subset`` (``GainResult``, ``HeadResult``) as an array: at least one,
    each an integer within the ``n_prompts`` (negative ones count from the end, as in numpy).

    >>> subset_index([0, 2, -1], 3)
    array([ 0,  2, -1])
    >>> subset_index([], 3)
    Traceback (most recent call last):
    funnel_tl.errors.FunnelError: a subset needs at least one prompt index, got none: every gain of no prompts would be NaN
    """  # noqa: E501 -- a doctest expects the whole exception message on one line
    index = np.asarray(prompt_indices)
    if index.size == 0:
        raise FunnelError("a subset needs at least one prompt index, got none: every gain of no prompts would be NaN")
    if index.ndim != 1 or index.dtype.kind not in "iu":
        raise FunnelError(f"a subset takes a list of prompt indices (integers), got {index.tolist()!r:.60}")
    outside = index[(index < -n_prompts) | (index >= n_prompts)]
    if outside.size:
        raise FunnelError(f"prompt index {int(outside[0])} is out of range: the result holds {n_prompts} prompts")
    return index.astype(np.int64)


def prompts_subset(prompts, provenance: dict, index) -> tuple[tuple[str, ...] | None, dict]:
    """The texts and provenance of a result (``GainResult``, ``HeadResult``) over some prompts:
    without texts, the sha256 of the measured set no longer describes it, so it is dropped
    rather than left to mislead."""
    if prompts is None:
        return None, dict(provenance, prompts_sha256=None)
    return tuple(prompts[i] for i in index), dict(provenance)


def prompts_block(prompts, n_prompts: int, provenance: dict) -> dict[str, Any]:
    """The ``prompts`` block of a results file: sha256, count and texts (null when not kept)."""
    sha = prompts_sha256(prompts) if prompts is not None else provenance.get("prompts_sha256")
    return {"sha256": sha, "n_prompts": int(n_prompts), "texts": None if prompts is None else list(prompts)}


def prompt_texts(block: dict) -> tuple[str, ...] | None:
    texts = block["texts"]
    return None if texts is None else tuple(texts)


def require_pandas():
    """pandas, imported on first use: it is an optional extra (``pip install 'funnel_tl[pandas]'``)."""
    try:
        import pandas  # imported on use: an optional extra
    except ImportError:
        raise FunnelError("to_pandas needs pandas: pip install pandas (or pip install 'funnel_tl[pandas]')") from None
    return pandas


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FunnelError(f"results file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise FunnelError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    except UnicodeDecodeError:
        raise FunnelError(f"{path} is not UTF-8 text: it is not a funnel_tl results file") from None
    except OSError as error:
        raise FunnelError(f"cannot read {path}: {error.strerror or error}") from None


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write text to a temporary file beside ``path``, then rename it into place.

    A crash or kill mid-write never leaves a half-written file under ``path``. The file gets the
    usual permissions (0666 less the umask), not ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = temporary_beside(path)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (see ``write_text_atomic``)."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
