"""transformers models in, ``TransformerBridge`` out: a checkpoint loaded with its weights checked,
or a model object the user already has.

funnel_tl loads every checkpoint itself (HF folders, hub names and GGUF files alike) with
``AutoModelForCausalLM.from_pretrained(..., output_loading_info=True)`` and hands the loaded model
to ``TransformerBridge.boot_transformers(name, hf_model=...)``. Loading it itself gives
transformers' report of missing, unexpected and mismatched tensors, which TransformerLens' own
load reads nowhere: a tensor the checkpoint lacks would be filled with unseeded random values and
measured, a config naming more layers than the weights hold would measure random layers, one
naming fewer would silently drop the rest. ``check_weights`` refuses all of these in one line.

What TransformerLens' own load does is done here the same way: the config asked for with
``output_attentions=True``, eager attention, the architecture adapter's ``prepare_loading``
patches (TransformerLens 4.x, where they can be called ahead of the load), the revision, the
dtype cast that keeps float32 buffers (``maybe_cast_floating_params``), device placement or an
accelerate ``device_map``/``max_memory``/``offload_folder``; ``boot_transformers`` then runs the
adapter's ``prepare_model`` and builds the bridge around the model, sharing its weights.

A transformers model object given to ``measure_gains`` or ``head_gains`` is bridged the same way
(``measurable``), around a copy of its module tree that shares every parameter and buffer: no
weight is copied, and the user's model is not rewired by the bridge.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from funnel_tl.errors import FunnelError
from funnel_tl.models.architectures import check_decoder_config, config_n_layers
from funnel_tl.models.folders import TOKENIZER_FILES, WEIGHT_PATTERNS, linear_init_skipped, local_loading
from funnel_tl.models.gguf import gguf_config, gguf_in_folder, gguf_tokenizer
from funnel_tl.models.identity import folder_name, load_tokenizer

# What load_model passes on to the load, besides its own arguments (anything else is refused).
LOAD_OPTIONS = ("offload_folder", "trust_remote_code", "code_revision", "hf_config_overrides")


def check_load_options(options: dict) -> None:
    """Refuse a keyword ``load_model`` does not know before anything loads."""
    unknown = sorted(set(options) - set(LOAD_OPTIONS))
    if unknown:
        raise FunnelError(
            f"load_model got an unexpected keyword {unknown[0]!r}: it takes name_or_dir, device, dtype, "
            f"device_map, revision, max_memory and {', '.join(LOAD_OPTIONS)}"
        )
    overrides = options.get("hf_config_overrides")
    if overrides is not None and not isinstance(overrides, dict):
        raise FunnelError(f"hf_config_overrides must be a dict of config fields, got {type(overrides).__name__}")


def official_hub_name(name: str) -> str:
    """A TransformerLens alias (``gpt2-small``) as the hub name it stands for; other names unchanged.

    TransformerLens' own load resolved these; funnel_tl loads the HF model itself, so it resolves
    them first (TransformerLens 4.x; 3.x aliases are its own business)."""
    try:
        # Imported on use: TransformerLens takes seconds to import (not needed by `--help`).
        from transformer_lens.tools.model_registry.registry_io import resolve_model_alias
    except ImportError:
        return name
    return resolve_model_alias(name) or name


def load_config(source: str, *, name: str, revision: str | None = None, gguf: Path | None = None, **options):
    """The HF config the model is built from, as TransformerLens' load asks for it, checked.

    Every refusal a config decides (not a decoder-only transformer, no layers) is made here,
    before a weight is read.
    """
    if gguf is not None:
        config = gguf_config(gguf, name)  # checked, cached
        config.output_attentions = True
    else:
        try:  # TransformerLens 4.x: tolerates 4.x-era remote-code configs, as its own load does
            from transformer_lens.utilities.hf_utils import autoconfig_with_remote_post_init_compat as read
        except ImportError:
            # Imported on use: transformers takes seconds to import (not needed by `--help`).
            from transformers import AutoConfig

            read = AutoConfig.from_pretrained  # type: ignore[assignment]  # both take (source, **options)
        remote = {key: options[key] for key in ("trust_remote_code", "code_revision") if options.get(key)}
        config = read(source, output_attentions=True, revision=revision, **remote)
        check_decoder_config(config.to_dict(), name)
    if options.get("hf_config_overrides"):
        config.__dict__.update(options["hf_config_overrides"])
        check_decoder_config(config.to_dict(), name)
    if "pad_token_id" not in config.__dict__ or getattr(config, "pad_token_id", None) is None:
        # As TransformerLens' load: transformers 5 needs a pad_token_id; the EOS stands in.
        eos = getattr(config, "eos_token_id", None)
        config.pad_token_id = eos[0] if isinstance(eos, list) and eos else (None if isinstance(eos, list) else eos)
    return config


def load_checkpoint(
    source: str,
    config,
    *,
    name: str,
    where: str,
    dtype: torch.dtype,
    device: str | None,
    device_map=None,
    max_memory: dict | None = None,
    revision: str | None = None,
    gguf: Path | None = None,
    **options,
):
    """The HF causal LM of ``source`` with config ``config``, its weights checked, placed and cast.

    ``where`` names the weights in a refusal (``model.safetensors``, the GGUF file, the hub name).
    A GGUF file is dequantized into ``dtype``; the result is an ordinary HF model (its GGUF
    marker removed: TransformerLens would not cast it, nor save_pretrained save it).
    """
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers import AutoModelForCausalLM

    kwargs = dict(
        config=config,
        dtype=dtype,
        attn_implementation="eager",
        revision=revision,
        output_loading_info=True,
        ignore_mismatched_sizes=True,
    )  # mismatches: refused below, in words
    kwargs.update(
        {key: options[key] for key in ("trust_remote_code", "code_revision", "offload_folder") if options.get(key)}
    )
    if device_map is not None:
        kwargs.update(device_map=device_map, max_memory=max_memory)
    if gguf is not None:
        kwargs["gguf_file"] = gguf.name
        source = str(gguf.parent)
    _prepare_loading(config, source, kwargs, dtype)
    hf_model: Any
    info: dict
    with _transformers_quiet():
        # With output_loading_info=True, (model, info); transformers annotates the model alone.
        hf_model, info = AutoModelForCausalLM.from_pretrained(source, **kwargs)  # type: ignore[misc]
    check_weights(info, hf_model, name, where, config_word="its GGUF metadata" if gguf else "config.json")
    if gguf is not None:
        drop_gguf_marker(hf_model)
    if device_map is None and device is not None:
        hf_model = hf_model.to(device)
    # Imported on use: TransformerLens takes seconds to import (not needed by `--help`).
    from transformer_lens.utilities.multi_gpu import maybe_cast_floating_params

    maybe_cast_floating_params(hf_model, dtype)  # as TransformerLens: float32 buffers (inv_freq) stay float32
    return hf_model.eval()


def drop_gguf_marker(hf_model) -> None:
    """A GGUF-loaded model's weights are already dequantized; only ``hf_quantizer`` and
    ``config.quantization_config`` still call it quantized (and make ``save_pretrained`` refuse)."""
    hf_model.hf_quantizer = None
    if getattr(hf_model.config, "quantization_config", None) is not None:
        del hf_model.config.quantization_config


def _prepare_loading(config, source: str, kwargs: dict, dtype: torch.dtype) -> None:
    """The architecture adapter's ``prepare_loading`` patches, before the load, as TransformerLens 4.x runs them.

    TransformerLens 3.x builds its adapter inside ``boot`` only: none of the families it measures
    needs a patch, so there is nothing to run ahead of the load there. An architecture
    TransformerLens has no adapter for is refused here, before the weights load.
    """
    try:
        # Imported on use: TransformerLens takes seconds to import (not needed by `--help`).
        from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
        from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_config_from_hf
        from transformer_lens.model_bridge.sources._hf_format import determine_architecture_from_hf_config
    except ImportError:
        return
    architecture = determine_architecture_from_hf_config(config)
    adapter = ArchitectureAdapterFactory.select_architecture_adapter(
        build_bridge_config_from_hf(copy.deepcopy(config), architecture, source, dtype)
    )
    adapter.prepare_loading(source, kwargs)


@contextlib.contextmanager
def _transformers_quiet():
    """transformers logs its loading report as a table on stderr; ``check_weights`` says it in one line."""
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


# A tensor's layer in HF names: model.layers.3., transformer.h.3., gpt_neox.layers.3., model.decoder.layers.3.
_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
# Tensors named in a refusal, per kind: enough to see the pattern, short enough for one line.
_SHOWN = 3


def check_weights(info: dict, hf_model, name: str, where: str, config_word: str = "config.json") -> None:
    """Refuse, in one line naming the tensors and the file, weights that do not fill the model the config describes.

    ``info``: ``from_pretrained(..., output_loading_info=True)``'s report. Missing tensors would
    hold random values, mismatched ones be re-initialized at random, unexpected ones be ignored;
    a config naming more or fewer layers than the weights hold is said in those words.
    """
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    if not (missing or unexpected or mismatched):
        return

    n_layers = config_n_layers(hf_model.config.to_dict())[1]
    parts = []
    layer_count = _layer_count_mismatch(missing, unexpected, hf_model, n_layers, config_word)
    if layer_count:
        parts.append(layer_count)
    else:
        if missing:
            parts.append(f"{len(missing)} tensor{'s' * (len(missing) > 1)} missing ({_compact(missing)})")
        if unexpected:
            parts.append(
                f"{len(unexpected)} tensor{'s' * (len(unexpected) > 1)} the model has no place for "
                f"({_compact(unexpected)})"
            )
    if mismatched:
        shapes: dict[tuple, list[str]] = {}
        for key, checkpoint_shape, model_shape in mismatched:
            shapes.setdefault((tuple(checkpoint_shape), tuple(model_shape)), []).append(key)
        shown = [
            f"{_compact(keys)}: {list(ckpt)} in the checkpoint, {list(model)} by {config_word}"
            for (ckpt, model), keys in list(shapes.items())[:_SHOWN]
        ]
        parts.append(f"{len(mismatched)} of another shape ({'; '.join(shown)})")
    if not layer_count or mismatched:
        parts[-1] += "; the model would hold random values there" if missing or mismatched else "; they would go unused"
    raise FunnelError(
        f"{name}: the weights in {where} do not fill the model {config_word} describes: "
        f"{', '.join(parts)}: re-save the checkpoint (model.save_pretrained) or fix {config_word}"
    )


def _layer_pattern(key: str) -> tuple[str, int | None]:
    """``("model.layers.{}.mlp.up_proj.weight", 3)`` for ``model.layers.3.mlp.up_proj.weight``; ``(key, None)``
    (braces escaped) for a tensor outside the layers."""
    match = _LAYER.search(f".{key}")
    if match is None:
        return key.replace("{", "{{").replace("}", "}}"), None
    start, end = match.start(1) - 1, match.end(1) - 1  # in key, not in ".key"
    return f"{key[:start]}{{}}{key[end:]}", int(match.group(1))


def _by_layer(keys) -> tuple[dict[int, set[str]], bool]:
    """``({layer: tensor patterns}, whether every key is inside a layer)``."""
    layers: dict[int, set[str]] = {}
    all_inside = True
    for key in keys:
        pattern, layer = _layer_pattern(key)
        if layer is None:
            all_inside = False
        else:
            layers.setdefault(layer, set()).add(pattern)
    return layers, all_inside


def _layer_count_mismatch(missing, unexpected, hf_model, n_layers, config_word) -> str | None:
    """The words for a config naming more or fewer layers than the weights hold, when that is all that is wrong:
    every missing (or every unexpected) tensor belongs to whole layers at the end of the stack."""
    if n_layers is None or bool(missing) == bool(unexpected):
        return None
    layers, all_inside = _by_layer(missing or unexpected)
    one_layer = _by_layer(hf_model.state_dict())[0].get(0)  # what a whole layer holds
    if not all_inside or not one_layer or any(patterns != one_layer for patterns in layers.values()):
        return None
    found = sorted(layers)
    if missing and found == list(range(found[0], n_layers)):
        return (
            f"{config_word} names {n_layers} layers but the weights hold {found[0]} "
            f"(layer{'s' * (len(found) > 1)} {_span(found[0], n_layers)} would be random)"
        )
    if unexpected and found == list(range(n_layers, found[-1] + 1)):
        return (
            f"the weights hold {found[-1] + 1} layers but {config_word} names {n_layers} "
            f"(layer{'s' * (len(found) > 1)} {_span(n_layers, found[-1] + 1)} would be left out)"
        )
    return None


def _span(start: int, stop: int) -> str:
    return str(start) if stop - start == 1 else f"{start}-{stop - 1}"


def _compact(keys) -> str:
    """Tensor names with their layer numbers merged: ``model.layers.{0-29}.mlp.up_proj.weight, ...``."""
    groups: dict[str, list[int]] = {}
    for key in keys:
        pattern, layer = _layer_pattern(key)
        groups.setdefault(pattern, []).extend([] if layer is None else [layer])
    shown = []
    for pattern, layers in itertools.islice(groups.items(), _SHOWN):
        layers = sorted(set(layers))
        if not layers:
            shown.append(pattern.format())
        elif len(layers) == 1:
            shown.append(pattern.format(layers[0]))
        elif layers == list(range(layers[0], layers[-1] + 1)):
            shown.append(pattern.format(f"{{{layers[0]}-{layers[-1]}}}"))
        else:
            shown.append(pattern.format("{" + ",".join(map(str, layers)) + "}"))
    more = len(groups) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def weight_files(folder: Path) -> str:
    """The weight files of a checkpoint folder, for a refusal: ``model.safetensors`` or
    ``4 files model-00001-of-00004.safetensors, ...``."""
    files = sorted({p.name for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern)})
    if len(files) == 1:
        return f"{folder / files[0]}"
    return f"{folder} ({len(files)} files: {files[0]}, ...)" if files else str(folder)


# ---- bridging a loaded model -----------------------------------------------------------------------
def bridge_model(hf_model, source: str, tokenizer=None):
    """``hf_model`` (loaded, placed, cast) in a ``TransformerBridge``, compatibility mode without processing.

    ``tokenizer``: the bridge's own ``model.tokenizer`` (TransformerLens configures it in place:
    never pass the one gains are computed with); None lets TransformerLens load it from ``source``.
    """
    # Imported on use: TransformerLens takes seconds to import (not needed by `--help`).
    from transformer_lens.model_bridge import TransformerBridge

    parameter = next(hf_model.parameters())
    dispatched = bool(getattr(hf_model, "hf_device_map", None))
    with linear_init_skipped():
        bridge = TransformerBridge.boot_transformers(
            source,
            hf_model=hf_model,
            dtype=parameter.dtype,
            device=None if dispatched else parameter.device,
            tokenizer=tokenizer,
        )
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    if any(module.training for module in bridge.modules()):  # a user's model may be in training mode
        bridge.eval()
    return bridge


# ---- the user's own model objects ---------------------------------------------------------------------
def measurable(model, tokenizer=None, caller: str = "measure_gains"):
    """``model`` as something funnel_tl measures, or one line saying what to pass.

    A ``TransformerBridge`` or ``HookedTransformer`` is returned as is; a transformers causal LM
    (``PreTrainedModel``) is bridged as ``load_model`` bridges, sharing its weights
    (``bridge_user_model``); a name, None or any other object is refused.

    >>> measurable("nano-2l")
    Traceback (most recent call last):
    ...
    funnel_tl.errors.FunnelError: measure_gains takes a loaded model, not a name: pass funnel_tl.load_model('nano-2l')
    """
    if isinstance(model, (str, os.PathLike)):
        raise FunnelError(f"{caller} takes a loaded model, not a name: pass funnel_tl.load_model({str(model)!r})")
    if model is None:
        raise FunnelError(
            f"{caller} needs a model: pass funnel_tl.load_model() (the largest bundled model) or "
            "funnel_tl.load_model(NAME_OR_DIR)"
        )
    if hasattr(model, "cfg") and hasattr(model, "hook_dict"):  # a TransformerBridge or a HookedTransformer
        return model
    transformers = __import__("sys").modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        return bridge_user_model(model, tokenizer)
    raise FunnelError(
        f"{caller} cannot measure a {type(model).__name__}: pass a model from funnel_tl.load_model, "
        "a TransformerBridge, a HookedTransformer, or a transformers AutoModelForCausalLM"
    )


def bridge_user_model(hf_model, tokenizer=None):
    """A transformers causal LM the user loaded, bridged as ``load_model`` bridges a checkpoint.

    The bridge wraps a copy of the model's module tree whose parameters and buffers are the
    model's own (nothing is copied or moved; later in-place changes to the weights are seen), so
    the user's model keeps its modules, attention implementation and training mode. Its tokenizer
    is ``tokenizer``, else the one saved with the checkpoint it was loaded from
    (``config._name_or_path``; a GGUF folder's, see ``gguf_files.gguf_tokenizer``).
    """
    source = str(getattr(hf_model, "name_or_path", "") or getattr(hf_model.config, "_name_or_path", "") or "")
    name = folder_name(Path(source)) if source and os.path.isdir(source) else (source or type(hf_model).__name__)
    check_decoder_config(hf_model.config.to_dict(), f"{name} ({type(hf_model).__name__})")
    if not type(hf_model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        raise FunnelError(
            f"{name} is a {type(hf_model).__name__}, without the language-model head TransformerLens "
            "bridges: load it with transformers.AutoModelForCausalLM.from_pretrained(...)"
        )
    tokenizer = tokenizer if tokenizer is not None else _saved_tokenizer(source, name)
    shared = _sharing_copy(hf_model)
    if getattr(getattr(shared.config, "quantization_config", None), "quant_method", None) == "gguf":
        drop_gguf_marker(shared)  # dequantized at load: an ordinary model for TransformerLens
    if hasattr(shared, "set_attn_implementation"):
        shared.set_attn_implementation("eager")  # as the bridge's own load (TransformerLens 3.x does not switch it)
    with _reloadable(tokenizer) as bridge_tokenizer:
        bridge = bridge_model(shared, source or name, tokenizer=bridge_tokenizer)
    bridge.funnel_name = name
    bridge.funnel_tokenizer = tokenizer
    bridge.funnel_provenance = {"model_object": type(hf_model).__name__, **({"model_source": source} if source else {})}
    return bridge


@contextlib.contextmanager
def _reloadable(tokenizer):
    """A copy of ``tokenizer`` for the bridge's own ``model.tokenizer``, loaded from a temporary folder.

    TransformerLens reconfigures the tokenizer it is given in place, and reloads it by its
    ``name_or_path`` to add a BOS: a tokenizer built in memory has no path, and a hub name may be
    offline. Saved and loaded back, the copy reloads from that folder, which lasts for the while.
    """
    # Imported on use: transformers takes seconds to import (not needed by `--help`).
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="funnel-tokenizer-") as folder:
        tokenizer.save_pretrained(folder)
        yield AutoTokenizer.from_pretrained(folder)


def _sharing_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``module`` whose parameters and buffers are the original tensors (no weight copied)."""
    memo = {id(tensor): tensor for tensor in itertools.chain(module.parameters(), module.buffers())}
    return copy.deepcopy(module, memo)


def _saved_tokenizer(source: str, name: str):
    """The tokenizer saved with the checkpoint a model was loaded from, or one line asking for ``tokenizer=``."""
    ask = (
        f"cannot find the tokenizer of {name}: pass tokenizer=transformers.AutoTokenizer.from_pretrained(...), "
        "the one the model was trained with"
    )
    if not source:
        raise FunnelError(ask)
    local = os.path.isdir(source)
    try:
        with local_loading(local):
            if local:
                gguf = (
                    gguf_in_folder(Path(source))
                    if not any((Path(source) / file).is_file() for file in TOKENIZER_FILES)
                    else None
                )
                if gguf is not None:
                    return gguf_tokenizer(gguf)[0]
            return load_tokenizer(source)
    except FunnelError:
        raise
    except (OSError, ValueError, TypeError):
        raise FunnelError(ask) from None
