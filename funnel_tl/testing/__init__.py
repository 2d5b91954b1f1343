"""What only tests, benchmarks and notebooks use: the seed notebook's reference method, small
random-weight checkpoints built offline.

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "Layout": "reference",
    "hf_sublayers": "reference",
    "hf_layout": "reference",
    "hf_is_parallel": "reference",
    "seed_reference": "reference",
    "reference_gains": "reference",
    "seed_token_norms": "reference",
    "reference_position_gains": "reference",
    "reference_readings": "reference",
    "seed_head_token_norms": "reference",
    "reference_means": "reference",
    "reference_effects": "reference",
    "ARCHITECTURES": "toy",
    "FAMILIES": "toy",
    "family_config": "toy",
    "corpus_texts": "toy",
    "train_tokenizer": "toy",
    "make_config": "toy",
    "build_checkpoint": "toy",
    "build_training_run": "toy",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.testing.reference import (
        Layout,
        hf_is_parallel,
        hf_layout,
        hf_sublayers,
        reference_effects,
        reference_gains,
        reference_means,
        reference_position_gains,
        reference_readings,
        seed_head_token_norms,
        seed_reference,
        seed_token_norms,
    )
    from funnel_tl.testing.toy import (
        ARCHITECTURES,
        FAMILIES,
        build_checkpoint,
        build_training_run,
        corpus_texts,
        family_config,
        make_config,
        train_tokenizer,
    )


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
