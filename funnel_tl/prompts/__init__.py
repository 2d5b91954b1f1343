"""Prompts: the bundled sets, files and datasets read lazily, tokenized by the model's own tokenizer
into padded batches.

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "SEED_PROMPTS": "sets",
    "PROMPT_SETS": "sets",
    "PROMPT_SET_DIR": "sets",
    "FILE_FORMATS": "sets",
    "WHAT_TO_PASS": "sets",
    "load_prompts": "sets",
    "iter_prompts": "sets",
    "iter_prompt_file": "sets",
    "check_unicode": "sets",
    "prompts_sha256": "sets",
    "dropped_phrase": "tokens",
    "check_tokens_left": "tokens",
    "pad_token_id": "tokens",
    "tokenize": "tokens",
    "truncation_limit": "tokens",
    "truncation_record": "tokens",
    "Batch": "tokens",
    "make_batches": "tokens",
    "padding_fraction": "tokens",
    "DATASET_BUILDERS": "sources",
    "read_prompts": "sources",
    "stream_prompts": "sources",
    "HELDOUT_THRESHOLD": "corpus",
    "is_heldout": "corpus",
    "documents": "corpus",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.prompts.corpus import HELDOUT_THRESHOLD, documents, is_heldout
    from funnel_tl.prompts.sets import (
        FILE_FORMATS,
        PROMPT_SET_DIR,
        PROMPT_SETS,
        SEED_PROMPTS,
        WHAT_TO_PASS,
        check_unicode,
        iter_prompt_file,
        iter_prompts,
        load_prompts,
        prompts_sha256,
    )
    from funnel_tl.prompts.sources import DATASET_BUILDERS, read_prompts, stream_prompts
    from funnel_tl.prompts.tokens import (
        Batch,
        check_tokens_left,
        dropped_phrase,
        make_batches,
        pad_token_id,
        padding_fraction,
        tokenize,
        truncation_limit,
        truncation_record,
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
