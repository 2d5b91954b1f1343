"""How large the effects' forwards are: prompts per batch and stacked interventions per forward.

Each intervened forward holds a copy of the batch and its logits; ``stack`` copies run as one
forward. On the CPU a batch is ``engine.CPU_BATCH_SIZE`` prompts; on CUDA ``"auto"`` fills half
the free memory with the stacked forwards and their logits (``effects_bytes_per_token``).
"""

from __future__ import annotations

import numpy as np
import torch

from funnel_tl.errors import FunnelError
from funnel_tl.measure.engine import activation_bytes_per_token, resolve_batch_size

STACK_CHOICES = "an integer, at least 1, or auto"
# Copies per forward that stack="auto" stacks. On the CPU stacking buys nothing (measured by
# benchmarks/bench_effects.py: 2, 4 and 8 copies ran 0.97-1.24x the time of one, even where a
# forward is launch-bound) and each copy holds its logits; on a GPU it is not measured here.
AUTO_STACK = 1


def check_stack(stack) -> int | str:
    """``stack``, interventions per forward: a whole number, 1 or more, or ``"auto"`` (``AUTO_STACK``)."""
    if isinstance(stack, str) and stack == "auto":
        return stack
    if isinstance(stack, bool) or not isinstance(stack, (int, np.integer)) or stack < 1:
        raise FunnelError(f"stack must be {STACK_CHOICES}, got {stack!r}")
    return int(stack)


def effects_batch_size(free_bytes: int, bytes_per_token: int, longest: int, n_prompts: int) -> int:
    """Prompts per batch filling half of ``free_bytes`` with tokens of ``longest`` length (CUDA "auto").

    Pure arithmetic, so it can be tested without a GPU:

    >>> effects_batch_size(free_bytes=8 * 2**30, bytes_per_token=1_000_000, longest=128, n_prompts=10_000)
    33
    """
    return max(1, min(n_prompts, (free_bytes // 2) // max(1, longest * bytes_per_token)))


def effects_bytes_per_token(cfg, element_size: int, longest: int, copies: int) -> int:
    """Memory of the effects' forwards per token of a batch: each copy's forward
    (``engine.activation_bytes_per_token``) and logits, and the clean logits kept beside them (the
    float64 log-probabilities take ``LOSS_CHUNK_FLOATS`` at a time, whatever the batch)."""
    vocab = int(cfg.d_vocab)
    return (
        copies * (activation_bytes_per_token(cfg, element_size, longest) + vocab * element_size) + vocab * element_size
    )


def resolve_sizes(batch_size, stack, model, token_ids, device, n_jobs: int) -> tuple[int, int]:
    """``(prompts per batch, copies per forward)``, at most ``n_jobs`` copies.

    ``stack="auto"`` is ``AUTO_STACK`` copies; ``batch_size="auto"`` is ``CPU_BATCH_SIZE`` on the
    CPU and, on CUDA, as many prompts as fill half the free memory with the forwards and the
    logits (``effects_bytes_per_token``). Both as checked (``MeasureOptions``, ``check_stack``).
    """
    copies = min(n_jobs, AUTO_STACK if stack == "auto" else int(stack))
    device = torch.device(device)
    if batch_size != "auto" or device.type != "cuda":
        return resolve_batch_size(batch_size, model, token_ids, device), copies
    free, _ = torch.cuda.mem_get_info(device)
    longest = max((len(ids) for ids in token_ids), default=1)
    per_token = effects_bytes_per_token(model.cfg, next(model.parameters()).element_size(), longest, copies)
    return effects_batch_size(free, per_token, longest, len(token_ids)), copies
