"""Local model folders: what loading one needs, its weight and tokenizer files checked."""

from __future__ import annotations

import contextlib
import json
import os
import struct
from pathlib import Path

import torch

from funnel_tl.errors import FunnelError
from funnel_tl.models.architectures import check_decoder_config


@contextlib.contextmanager
def local_loading(local: bool | None):
    """For a local folder: keep HuggingFace off the hub, and quiet its weight-loading bar.

    A local load takes a moment, and its progress bar would otherwise precede every one-line
    error on stderr; downloads from the hub keep their bars.
    """
    if not local:
        yield
        return
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers.utils import logging as transformers_logging

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    bars_were_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_were_on:
            transformers_logging.enable_progress_bar()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def linear_init_skipped():
    """``nn.Linear`` layers built inside fill their weights with NaN instead of a random init.

    The bridge splits fused QKV projections into new ``nn.Linear`` layers and then replaces their
    weights with slices of the checkpoint's: the random init (measured: 0.1-0.2 s of a
    Pythia-160m-shaped load) is thrown away. NaN rather than nothing: a weight that were somehow
    never replaced would make every activation it touches NaN, which the measurement reports
    (never a silently random number). HF's own initialization of weights missing from a
    checkpoint goes through ``transformers.initialization``, not ``reset_parameters``, so it is
    untouched. Not thread-safe: a Linear built by another thread meanwhile would start as NaN too.
    """
    original = torch.nn.Linear.reset_parameters

    def fill_nan(self):
        with torch.no_grad():
            self.weight.fill_(float("nan"))
            if self.bias is not None:
                self.bias.fill_(float("nan"))

    torch.nn.Linear.reset_parameters = fill_nan
    try:
        yield
    finally:
        torch.nn.Linear.reset_parameters = original


# Files from which AutoTokenizer builds a real tokenizer; without one it can return an empty one,
# and the failure would surface later as "prompt 0 is empty after tokenization".
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tiktoken.model",
)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def check_model_folder(folder: Path, name: str | None = None) -> None:
    """Refuse an incomplete or damaged checkpoint folder before anything loads from it.

    Checks, in order of cost: ``config.json`` is a JSON object describing a decoder-only model
    (the kind of model first: a missing file is beside the point for one that would be refused);
    weights are present; a tokenizer file is present; every ``.safetensors`` header parses and its tensors fit in the
    file (a truncated download fails here, not half way through loading).
    """
    name = name or str(folder)
    fix = "re-download or re-save the checkpoint (model.save_pretrained and tokenizer.save_pretrained)"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FunnelError(f"{name}: config.json cannot be read ({first_line(error)}): {fix}") from None
    if not isinstance(config, dict):
        raise FunnelError(f"{name}: config.json is not a JSON object: {fix}")

    check_decoder_config(config, name)
    weights = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)})
    if not weights:
        raise FunnelError(f"{name} has a config.json but no weights (model.safetensors or pytorch_model.bin): {fix}")
    if not any((folder / file).is_file() for file in TOKENIZER_FILES) and not list(folder.glob("*.tiktoken")):
        raise FunnelError(
            f"{name} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...): save the "
            "model's tokenizer into the folder (tokenizer.save_pretrained)"
        )
    for path in weights:
        if path.suffix == ".safetensors":
            _check_safetensors(path, name, fix)
        elif path.stat().st_size == 0:
            raise FunnelError(f"{name}: {path.name} is empty: {fix}")


def _check_safetensors(path: Path, name: str, fix: str) -> None:
    """The header of a safetensors file parses and the data it describes fits in the file."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if header_length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(handle.read(header_length).decode("utf-8"))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
        raise FunnelError(
            f"{name}: {path.name} is not a readable safetensors file ({first_line(error)}): {fix}"
        ) from None
    if 8 + header_length + end > size:
        raise FunnelError(f"{name}: {path.name} is truncated ({size} bytes of {8 + header_length + end}): {fix}")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
