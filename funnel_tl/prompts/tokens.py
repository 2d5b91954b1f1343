"""Prompts to tokens: the model's own tokenizer, truncation, positions dropped, padded batches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from funnel_tl.errors import FunnelError


def dropped_phrase(drop_first: int) -> str:
    """How titles and summaries say that ``drop_first`` leading positions were left out.

    >>> dropped_phrase(1), dropped_phrase(4)
    ('first position dropped', 'first 4 positions dropped')
    """
    return "first position dropped" if drop_first == 1 else f"first {drop_first} positions dropped"


def check_tokens_left(token_ids: Sequence[Sequence[int]], drop_first: int, first_index: int = 0) -> None:
    """Every prompt keeps a token after its first ``drop_first``; ``first_index`` numbers them in a longer set."""
    short = next((i for i, ids in enumerate(token_ids) if len(ids) <= drop_first), None)
    if short is not None:
        raise FunnelError(
            f"prompt {first_index + short} has {len(token_ids[short])} tokens, none left after dropping the "
            f"first {drop_first}: lower --drop-first or remove short prompts"
        )


def pad_token_id(tokenizer) -> int:
    """The id right-padding uses: the tokenizer's pad token, else its end-of-text, else 0 (masked out either way)."""
    return next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)


def tokenize(
    tokenizer,
    prompts: Sequence[str],
    n_ctx: int | None = None,
    model_name: str = "the model",
    max_tokens: int | None = None,
    truncation: dict | None = None,
    first_index: int = 0,
    d_vocab: int | None = None,
) -> list[list[int]]:
    """Token ids of each prompt, exactly as ``tokenizer(prompt)`` gives them.

    ``max_tokens``: keep only the first ``max_tokens`` tokens of each prompt, and fill
    ``truncation`` (a dict, if given) with what was cut (see ``truncation_record``). Without it a
    prompt longer than the context is an error, never cut silently. ``first_index``: the place of
    ``prompts[0]`` in the caller's whole prompt set (a chunk of a streamed corpus), for messages
    and the truncation record. ``d_vocab``: the model's vocabulary (embedding rows); an id at or
    past it would index past the embedding in the forward.

    Raises ``FunnelError`` for a prompt with no tokens, more tokens than the context, or a token
    the model has no embedding for.
    """
    if max_tokens is not None and max_tokens < 1:
        raise FunnelError(f"max_tokens_per_prompt must be at least 1, got {max_tokens}")
    token_ids, original_lengths = [], []
    # One call for all prompts (a fast tokenizer encodes the list at once, ~10× fewer Python calls):
    # without padding or truncation each row is exactly ``tokenizer(prompt)["input_ids"]``.
    encoded = tokenizer(list(prompts))["input_ids"] if len(prompts) else []
    for index, ids in enumerate(encoded):
        ids = list(ids)
        if not ids:
            raise FunnelError(f"prompt {first_index + index} is empty after tokenization: remove it")
        original_lengths.append(len(ids))
        if d_vocab is not None and d_vocab > 0 and max(ids) >= d_vocab:
            raise FunnelError(
                f"prompt {first_index + index} holds token id {max(ids)}, but {model_name} has a vocabulary of "
                f"{d_vocab} (ids 0-{d_vocab - 1}): its tokenizer does not match its embedding; check the "
                "checkpoint's tokenizer files and the vocab_size of its config.json"
            )
        if max_tokens is not None:
            ids = ids[:max_tokens]
        elif n_ctx is not None and len(ids) > n_ctx:
            raise FunnelError(
                f"prompt {first_index + index} has {len(ids)} tokens but {model_name} has a context of {n_ctx}: "
                "shorten or split it, or pass --max-tokens-per-prompt context to truncate every prompt to it"
            )
        token_ids.append(ids)
    if max_tokens is not None and truncation is not None:
        truncation.update(truncation_record(original_lengths, max_tokens, first_index))
    return token_ids


def truncation_limit(max_tokens: int | str | None, n_ctx: int | None) -> int | None:
    """The tokens kept per prompt: ``max_tokens`` capped at the context, ``"context"`` for the context.

    ``max_tokens`` as checked by ``MeasureOptions`` (None, a number 1 or more, or ``"context"``);
    what needs the model, its context, is checked here.

    >>> truncation_limit("context", 256), truncation_limit(100, 256), truncation_limit(1000, 256)
    (256, 100, 256)
    >>> truncation_limit(None, 256) is None
    True
    """
    if max_tokens is None:
        return None
    if max_tokens == "context":
        if n_ctx is None:
            raise FunnelError("the model states no context length: give --max-tokens-per-prompt a number")
        return int(n_ctx)
    return min(int(max_tokens), int(n_ctx)) if n_ctx is not None else int(max_tokens)


def truncation_record(original_lengths: Sequence[int], max_tokens: int, first_index: int = 0) -> dict:
    """What truncation did, for the provenance of results.json: nothing is cut silently.

    >>> truncation_record([3, 10, 7], 5)
    {'truncation': {'max_tokens_per_prompt': 5, 'n_truncated': 2, 'truncated_prompts': [1, 2], 'tokens_dropped': 7}}
    """
    cut = [i for i, n in enumerate(original_lengths) if n > max_tokens]
    return {
        "truncation": {
            "max_tokens_per_prompt": int(max_tokens),
            "n_truncated": len(cut),
            "truncated_prompts": [first_index + i for i in cut],
            "tokens_dropped": int(sum(original_lengths[i] - max_tokens for i in cut)),
        }
    }


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids of some prompts, with their places in the original order."""

    indices: list[int]  # position of each row's prompt in the caller's prompt list
    tokens: torch.Tensor  # [batch, pos] int64
    attention_mask: torch.Tensor  # [batch, pos] 1 for real tokens, 0 for padding


def make_batches(token_ids: Sequence[Sequence[int]], batch_size: int, pad_token_id: int = 0) -> Iterator[Batch]:
    """Yield batches of prompts of similar length (length bucketing), right-padded.

    Prompts are sorted by length so that little compute goes to padding; each batch carries the
    original indices, so results can be put back in the caller's order. ``batch_size``: prompts
    per batch, 1 or more (``MeasureOptions`` checks it, ``engine.resolve_batch_size`` resolves ``"auto"``).
    """
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        width = max(len(token_ids[i]) for i in indices)
        # Padded in Python and converted once: one tensor per batch, not one per prompt.
        rows = [list(token_ids[i]) + [pad_token_id] * (width - len(token_ids[i])) for i in indices]
        masks = [[1] * len(token_ids[i]) + [0] * (width - len(token_ids[i])) for i in indices]
        yield Batch(
            indices=indices,
            tokens=torch.tensor(rows, dtype=torch.long),
            attention_mask=torch.tensor(masks, dtype=torch.long),
        )


def padding_fraction(batches: Iterable[Batch]) -> float:
    """Share of the positions in ``batches`` that are padding (0 means no wasted compute).

    >>> padding_fraction(make_batches([[1] * 5, [2] * 1, [3] * 9, [4] * 2], batch_size=2))
    0.2272727272727273
    """
    real = padded = 0
    for batch in batches:
        real += int(batch.attention_mask.sum())
        padded += batch.attention_mask.numel()
    return 1.0 - real / padded if padded else 0.0
