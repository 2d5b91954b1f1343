"""Loading models: bundled short names, local checkpoint folders and hub names alike.

Every model is booted through TransformerLens' ``TransformerBridge`` with
``enable_compatibility_mode(no_processing=True)``: the bridge wraps the HuggingFace modules, so
activations equal HF's (~1e-7), and no weight processing runs. Processing would change the very
norms we measure (``center_writing_weights`` shrinks ``attn_out``/``mlp_out``, ``fold_ln`` strips
the LayerNorm affine, ``fold_value_biases`` moves b_V into b_O).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .errors import FunnelError

BUNDLED_DIR = Path(__file__).parent / "bundled"

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def bundled_models() -> dict[str, Path]:
    """Short names of the models shipped inside the package, smallest first.

    >>> isinstance(bundled_models(), dict)
    True
    """
    if not BUNDLED_DIR.is_dir():
        return {}
    found = [p for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file()]
    return {p.name: p for p in sorted(found, key=_n_parameters_on_disk)}


def _n_parameters_on_disk(folder: Path) -> tuple[int, str]:
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    return (weights, folder.name)


def default_model_name() -> str:
    """The largest bundled model: what every command runs when no model is named."""
    names = list(bundled_models())
    if not names:
        raise FunnelError(
            "no bundled model is installed with this copy of funnel_tl: name one with --model "
            "(a local checkpoint folder or a hub name)"
        )
    return names[-1]


def resolve_model(name_or_dir: str | os.PathLike | None) -> tuple[str, str, bool]:
    """Return (display name, what to load, whether it is local) for a model argument.

    Local folders are made absolute: TransformerLens resolves some bare names (``neox``,
    ``gpt2-small``) as aliases of hub models, and an absolute path is never an alias.
    """
    if name_or_dir is None:
        name_or_dir = default_model_name()
    name = str(name_or_dir)
    bundled = bundled_models()
    if name in bundled:
        return name, str(bundled[name].resolve()), True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FunnelError(f"{path} is a folder but holds no config.json: give a HuggingFace checkpoint folder")
        return name, str(path.resolve()), True
    if name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1) or name.count("/") > 1:
        raise FunnelError(f"model folder not found: {name} (bundled models: {', '.join(bundled) or 'none'})")
    return name, name, False


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FunnelError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> torch.dtype:
    """``auto`` is float16 on CUDA (the seed's choice for Pythia-6.9B) and float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise FunnelError(f"unknown dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


@contextlib.contextmanager
def _local_loading(local: bool):
    """For a local folder: keep HuggingFace off the hub, and quiet its weight-loading bar.

    A local load takes a moment, and its progress bar would otherwise precede every one-line
    error on stderr; downloads from the hub keep their bars.
    """
    if not local:
        yield
        return
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


def load_tokenizer(source: str, revision: str | None = None):
    """The model's own HuggingFace tokenizer, untouched.

    The bridge's ``model.tokenizer`` is reconfigured by TransformerLens and prepends a BOS for
    GPT-2 and Llama where the HF tokenizer does not (measured: 4% off the seed's numbers), so the
    gains are always computed from the tokens of this tokenizer instead.
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, revision=revision)


def load_model(name_or_dir: str | os.PathLike | None = None, device: str = "auto",
               dtype: str | torch.dtype = "auto", device_map=None, revision: str | None = None,
               **boot_kwargs):
    """Load a model through ``TransformerBridge`` with unprocessed weights.

    ``name_or_dir``: a bundled short name (``funnel_tl.bundled_models()``), a local HuggingFace
    checkpoint folder, or a hub name such as ``EleutherAI/pythia-6.9b``; ``None`` loads the
    largest bundled model. ``device="auto"`` picks CUDA when present; ``dtype="auto"`` is float16
    on CUDA and float32 on the CPU; ``device_map`` (e.g. ``"auto"``) spreads a model too large for
    one GPU and is passed to TransformerLens as is. ``revision`` picks a hub revision such as
    Pythia's ``step1000``.

    The returned bridge carries ``funnel_name`` (the name given) and ``funnel_tokenizer`` (the
    model's own HF tokenizer, see ``load_tokenizer``).

    >>> model = load_model(device="cpu")  # doctest: +SKIP
    """
    from transformer_lens.model_bridge import TransformerBridge

    name, source, local = resolve_model(name_or_dir)
    if device_map is not None:
        device_arg = {"device_map": device_map}
        device = "cuda"
    else:
        device = resolve_device(device)
        device_arg = {"device": device}
    torch_dtype = resolve_dtype(dtype, device)
    try:
        with _local_loading(local):
            tokenizer = load_tokenizer(source, revision=revision)
            bridge = TransformerBridge.boot_transformers(
                source, dtype=torch_dtype, revision=revision, **device_arg, **boot_kwargs
            )
    except FunnelError:
        raise
    except (OSError, ValueError, KeyError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = "check the name, or pass a local checkpoint folder" if not local else "is it a complete HuggingFace checkpoint?"
        raise FunnelError(f"cannot load model {name!r}: {first_line} ({hint})") from error
    except torch.cuda.OutOfMemoryError:
        raise FunnelError(
            f"out of GPU memory loading {name!r}: use --dtype float16, a smaller model, or device_map='auto'"
        ) from None
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    bridge.eval()
    bridge.funnel_name = name
    bridge.funnel_tokenizer = tokenizer
    return bridge


def model_name(model) -> str:
    """The name a model was loaded by, for results and titles."""
    return getattr(model, "funnel_name", None) or str(getattr(model.cfg, "model_name", "model"))


def tokenizer_of(model):
    """The tokenizer gains are computed with: the model's own HF tokenizer (see ``load_tokenizer``)."""
    tokenizer = getattr(model, "funnel_tokenizer", None)
    if tokenizer is not None:
        return tokenizer
    source = getattr(model.cfg, "tokenizer_name", None)
    if source:
        try:
            return load_tokenizer(source)
        except OSError:
            pass
    raise FunnelError(
        "cannot find this model's HuggingFace tokenizer: load it with funnel_tl.load_model, or pass tokenizer="
    )
