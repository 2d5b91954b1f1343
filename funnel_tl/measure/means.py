"""The ``mean`` intervention's means: each measured sublayer's contribution averaged over a prompt set.

One pass of the engine (its early stop and fast executor included) sums every measured
contribution, ``hook_attn_out`` and ``hook_mlp_out``, over every counted token, in float64.
``measure_effects`` computes them from its own prompts unless given; torchrun's ranks add theirs
up (``ComponentMeans.assembled``) so that every rank intervenes with the same means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from funnel_tl.components import EFFECT_COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.measure.engine import Engine
from funnel_tl.measure.interventions import COMPONENT_HOOKS
from funnel_tl.measure.layers import layers_in_model
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.measure.streaming import TokenStream
from funnel_tl.models.identity import model_name


@dataclass(frozen=True)
class ComponentMeans:
    """Each measured contribution summed over every measured token: ``sums[c]`` ``[layer, d_model]``."""

    layers: tuple[int, ...]
    sums: dict[str, np.ndarray]  # component ("attention", "mlp") -> [layer, d_model], float64
    n_tokens: int

    def mean(self, component: str) -> np.ndarray:
        """``[layer, d_model]``: the mean contribution over the measured tokens."""
        return self.sums[component] / self.n_tokens

    def tensors(self, device, dtype=torch.float32) -> dict[tuple[int, str], torch.Tensor]:
        """``{(layer, component): [d_model]}`` on ``device``, for ``intervene`` (cast to the model's dtype there)."""
        return {
            (layer, component): torch.as_tensor(self.mean(component)[row], dtype=dtype, device=device)
            for component in EFFECT_COMPONENTS
            for row, layer in enumerate(self.layers)
        }

    def assembled(self, pieces, prompts, truncation=None) -> ComponentMeans:
        """torchrun (``distributed.assemble``): every rank's sums added up."""
        parts = [part for _, part in pieces]
        return ComponentMeans(
            self.layers,
            {c: sum(part.sums[c] for part in parts) for c in EFFECT_COMPONENTS},
            sum(part.n_tokens for part in parts),
        )


class ContributionSums:
    """``engine.Reduction``: each prompt's contributions summed over its counted tokens, ``[batch, layer, d_model]``."""

    def __init__(self, model, layers: Sequence[int]):
        self.model, self.layers = model, tuple(layers)
        self.row = {layer: row for row, layer in enumerate(self.layers)}

    def reads(self, first: bool) -> list[tuple[int, str]]:
        return [(layer, suffix) for layer in self.layers for suffix in COMPONENT_HOOKS.values()]

    def start(self, batch, tokens, attention_mask, counted, first: bool) -> None:
        self.counted = counted[..., None]  # [batch, pos, 1]
        # suffix -> one [batch, d_model] sum per layer, each filled in as its hook fires
        self.sums: dict[str, list[Any]] = {suffix: [None] * len(self.layers) for suffix in COMPONENT_HOOKS.values()}

    def read(self, layer: int, suffix: str, activation: torch.Tensor) -> None:
        # Selected, not multiplied by the mask: a non-finite padded position must not poison the sum.
        kept = torch.where(self.counted, activation, torch.zeros((), dtype=activation.dtype, device=activation.device))
        # float64: SmolLM2's first-token contributions are ~10^3 times the others', and a float32 sum
        # moved its mean-ablation Δloss by ~1e-5 nats against the reference (measured).
        self.sums[suffix][self.row[layer]] = kept.sum(dim=1, dtype=torch.float64)  # [batch, d_model]

    def finish(self) -> dict[str, torch.Tensor]:
        return {suffix: torch.stack(rows, dim=1) for suffix, rows in self.sums.items()}  # [batch, layer, d_model]

    def commit(self) -> None:
        pass

    def raise_nonfinite(self) -> None:
        raise FunnelError(
            f"non-finite sublayer output in {model_name(self.model)} while averaging the contributions "
            "for the mean intervention: try --dtype float32"
        )


def component_means(
    model, prompts, options: MeasureOptions | None = None, tokenizer=None, progress=None
) -> ComponentMeans:
    """Every measured sublayer's contribution summed over every measured token of ``prompts`` (one pass).

    The ``mean`` intervention replaces a contribution by ``result.mean(component)[layer]``.

    Args:
        model: a bridge or ``HookedTransformer``, as ``measure_gains`` takes it.
        prompts: ``"seed"``, a prompt file path, or a list of strings.
        options: the measurement's (``layers``, ``batch_size``, ``drop_first``: positions before
            it are not measured tokens, ``executor``, ``max_tokens_per_prompt``); default
            ``MeasureOptions()``.
        tokenizer: the tokenizer to use; default the model's own.
        progress: a progress bar; None shows one on a terminal.

    Returns:
        ``ComponentMeans``: the sums ``[layer, d_model]`` of each component and their token count.

    >>> from funnel_tl import load_model
    >>> means = component_means(load_model("nano-2l", device="cpu"), "seed")  # doctest: +SKIP
    >>> means.mean("mlp").shape  # doctest: +SKIP
    (2, 64)
    """
    options = options if options is not None else MeasureOptions()
    chosen = layers_in_model(options.layers, model.cfg.n_layers)
    reduction = ContributionSums(model, chosen)
    engine = Engine(model, reduction, options.executor)
    stream = TokenStream(model, prompts, options, tokenizer, engine.device)
    sums = {component: np.zeros((len(chosen), model.cfg.d_model)) for component in EFFECT_COMPONENTS}
    n_tokens = 0
    batches = engine.run(
        stream.batches(),
        options.drop_first,
        progress,
        description=f"means {model_name(model)}",
        total=stream.known_total,
    )
    for _, batch_sums, counted in batches:
        for component, suffix in COMPONENT_HOOKS.items():
            sums[component] += batch_sums[suffix].sum(axis=0)  # [layer, d_model]
        n_tokens += int(counted.sum())
    return ComponentMeans(chosen, sums, n_tokens)
