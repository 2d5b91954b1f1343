"""A model's identity: its name, where it came from, its tokenizer, the versions that measured it."""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

from funnel_tl.errors import FunnelError

# Training checkpoint folders: step1000/ (Pythia, nanoGPT-style) or checkpoint-1000/ (HF Trainer).
CHECKPOINT_FOLDER = re.compile(r"^(?:step|checkpoint)[-_]?(\d+)$")


def local_checkpoints(folder: str | os.PathLike) -> dict[int, Path]:
    """Training checkpoints in a local folder: ``step<N>/`` or ``checkpoint-<N>/`` subfolders
    holding a ``config.json``, by step (numerically: ``step500`` comes before ``step10000``).

    Args:
        folder: A training run's folder.

    Returns:
        ``{step: checkpoint folder}`` in step order; empty where it holds none.
    """
    found = {}
    for child in Path(folder).iterdir():
        match = CHECKPOINT_FOLDER.match(child.name)
        if match and (child / "config.json").is_file():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def load_tokenizer(source: str, revision: str | None = None):
    """The model's own HuggingFace tokenizer, untouched.

    The bridge's ``model.tokenizer`` is reconfigured by TransformerLens and prepends a BOS for
    GPT-2 and Llama where the HF tokenizer does not (measured: 4% off the seed's numbers), so the
    gains are always computed from the tokens of this tokenizer instead.
    """
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, revision=revision)


def model_name(model) -> str:
    """The name a model was loaded by, for results and titles.

    A bridge booted by the user from a local folder (``TransformerBridge.boot_transformers(path)``)
    carries that path as its ``cfg.model_name``; it is named by the folder instead, as compare
    names a checkpoint: ``.../pythia-70m`` is ``pythia-70m``, ``.../run/step1000`` (or
    ``checkpoint-1000``) is ``run@step1000``. ``source_provenance`` keeps the full path.

    >>> from types import SimpleNamespace
    >>> model_name(SimpleNamespace(cfg=SimpleNamespace(model_name="EleutherAI/pythia-70m")))
    'EleutherAI/pythia-70m'
    """
    given = getattr(model, "funnel_name", None)
    if given:
        return given
    name = str(getattr(model.cfg, "model_name", "model"))
    return folder_name(Path(name)) if os.path.isdir(name) else name


def source_provenance(model) -> dict:
    """What results record about where a model came from: ``{"model_source": full folder path}`` for a
    model that ``model_name`` names by a shorter name, and what ``load_model`` recorded
    (``funnel_provenance``: a GGUF file's ``{"gguf": {"file", "sha256", "tensor_types", "tokenizer"}}``)."""
    name = str(getattr(model.cfg, "model_name", ""))
    shortened = name and not getattr(model, "funnel_name", None) and model_name(model) != name
    return {**({"model_source": name} if shortened else {}), **dict(getattr(model, "funnel_provenance", None) or {})}


def folder_name(folder: Path) -> str:
    """A checkpoint folder's name: its own, or ``parent@step<N>`` for ``step<N>``/``checkpoint-<N>``."""
    folder = folder.resolve()
    step = CHECKPOINT_FOLDER.match(folder.name)
    if step and folder.parent.name:
        return f"{folder.parent.name}@step{step.group(1)}"
    return folder.name or str(folder)


def tokenizer_of(model):
    """The tokenizer gains are computed with: the model's own HF tokenizer (see ``load_tokenizer``)."""
    tokenizer = getattr(model, "funnel_tokenizer", None)
    if tokenizer is not None:
        return tokenizer
    # A HookedTransformer names its tokenizer; a bridge booted by the user has no tokenizer_name
    # and, as TransformerLens itself does, takes the tokenizer of the folder or hub name it was
    # booted from (its cfg.model_name). A HookedTransformer's model_name is a short alias, not a source.
    sources = [getattr(model.cfg, "tokenizer_name", None)]
    if is_bridge(model):
        sources.append(getattr(model.cfg, "model_name", None))
    for source in filter(None, sources):
        try:
            return load_tokenizer(str(source))
        except (OSError, ValueError):  # no tokenizer there (ValueError: transformers cannot tell its kind)
            pass
    raise FunnelError(
        "cannot find this model's HuggingFace tokenizer: load it with funnel_tl.load_model, or pass tokenizer="
    )


def is_bridge(model) -> bool:
    """A ``TransformerBridge`` (it wraps an HF model through an architecture ``adapter``)."""
    return hasattr(model, "adapter")


def installed_version(package: str) -> str:
    """TransformerLens 3.x has no ``__version__``; its installed metadata has."""

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"
