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
    # Dot-folders are models being rebuilt by scripts/train_nano.py, not yet swapped in.
    found = [p for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file() and not p.name.startswith(".")]
    return {p.name: p for p in sorted(found, key=_n_parameters_on_disk)}


def bundled_checkpoints(name: str) -> dict[int, Path]:
    """Training checkpoints shipped with bundled model ``name``: step → folder, in step order.

    They live in ``bundled/<name>/checkpoints/step<N>/`` (full HF checkpoints, step 0 = the random
    initialization) and load as ``load_model(name, revision="step<N>")``, like Pythia's hub
    revisions. A bundled model without checkpoints gives an empty dict.

    >>> steps = {name: list(bundled_checkpoints(name)) for name in bundled_models()}
    >>> all(s == sorted(s) for s in steps.values())
    True
    """
    bundled = bundled_models()
    if name not in bundled:
        raise FunnelError(f"no bundled model called {name!r} (bundled models: {', '.join(bundled) or 'none'})")
    found = {}
    for folder in (bundled[name] / "checkpoints").glob("step*"):
        step = folder.name[len("step"):]
        if step.isdigit() and (folder / "config.json").is_file():
            found[int(step)] = folder
    return dict(sorted(found.items()))


def _bundled_revision(name: str, revision: str) -> Path:
    """The folder of bundled checkpoint ``revision`` ("step<N>") of bundled model ``name``."""
    checkpoints = bundled_checkpoints(name)
    step = revision[len("step"):] if revision.startswith("step") else ""
    if not step.isdigit() or int(step) not in checkpoints:
        if not checkpoints:
            raise FunnelError(f"bundled model {name!r} ships no checkpoints, so no revision {revision!r}: "
                              "leave revision out")
        available = ", ".join(f"step{s}" for s in checkpoints)
        raise FunnelError(f"bundled model {name!r} has no revision {revision!r}: choose one of {available}")
    return checkpoints[int(step)]


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
    if name.startswith("nano-") and "/" not in name:
        # A mistyped bundled name: no hub repo is named without an owner like this, so asking the
        # hub would only spend a minute on retries offline.
        raise FunnelError(f"no bundled model called {name!r}: choose one of {', '.join(bundled) or 'none'}")
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
               max_memory: dict | None = None, **boot_kwargs):
    """Load a model through ``TransformerBridge`` with unprocessed weights.

    ``name_or_dir``: a bundled short name (``funnel_tl.bundled_models()``), a local HuggingFace
    checkpoint folder, or a hub name such as ``EleutherAI/pythia-6.9b``; ``None`` loads the
    largest bundled model. ``device="auto"`` picks CUDA when present; ``dtype="auto"`` is float16
    on CUDA and float32 on the CPU; ``device_map`` (e.g. ``"auto"``) spreads a model too large for
    one GPU and is passed to TransformerLens as is (``"auto"``, ``"balanced"``, ``"sequential"``,
    or an explicit ``{module: device}`` dict), with ``max_memory`` (``{0: "20GiB", "cpu":
    "64GiB"}``) capping each device; ``device`` is then ignored. ``revision`` picks a hub revision such as
    Pythia's ``step1000``, or a bundled training checkpoint (``load_model("nano-4l",
    revision="step64")``, see ``bundled_checkpoints``); a bundled checkpoint's ``funnel_name`` is
    ``"nano-4l@step64"``, so its results name the step.

    The returned bridge carries ``funnel_name`` (the name given) and ``funnel_tokenizer`` (the
    model's own HF tokenizer, see ``load_tokenizer``).

    >>> model = load_model(device="cpu")  # doctest: +SKIP
    """
    from transformer_lens.model_bridge import TransformerBridge

    name, source, local = resolve_model(name_or_dir)
    if revision is not None and local and name in bundled_models():
        # A bundled model's revisions are folders of its own, not git revisions of a hub repo.
        source = str(_bundled_revision(name, revision).resolve())
        name, revision = f"{name}@{revision}", None
    if device_map is not None:
        device_arg = {"device_map": device_map, "max_memory": max_memory}
        # Only for dtype="auto": float16 when the map can reach a GPU, as on one GPU.
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif max_memory is not None:
        raise FunnelError("max_memory caps the devices of a device_map: give device_map too")
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
