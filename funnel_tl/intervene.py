"""Forward passes with interventions (``funnel_tl.interventions``) applied to sublayer contributions.

A contribution is what the residual stream receives from a sublayer: ``blocks.{l}.hook_attn_out``
(a) or ``blocks.{l}.hook_mlp_out`` (m), after the post-norm on sandwich-norm models (DESIGN.md
§2). Nothing else changes: on parallel blocks the other sublayer reads the block input, which no
intervention touches, and every later layer reads the changed stream.

A *runner* does the forwards, logits out, with some interventions applied to some rows of the
batch. Several interventions can share one forward, each on its own copy of the prompts stacked
along the batch (``Edit.rows``): rows of a transformer never mix, so each copy's logits are those
of a forward with its one intervention (the benchmark and tests hold it to float rounding).

- ``TLRunner`` changes the activations through the model's own TransformerLens hooks (a hook that
  returns a tensor replaces the activation): the truth, for every model kind.
- ``HFRunner`` runs the plain HuggingFace module tree inside a bridge (``engine.HFExecutor``'s
  unwrapped copy, the same parameter tensors) and changes the *output* of the HF module behind
  each TL hook point, found by identity as the engine finds it. It is only used where it proves
  itself against ``TLRunner`` on the run's first batch (``effects``).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Float

from .engine import HFExecutor, forward_kwargs
from .errors import FunnelError
from .interventions import COMPONENT_HOOKS, Intervention


@dataclass(frozen=True)
class Edit:
    """Apply ``intervention`` to ``component`` of ``layer`` on the batch rows ``rows`` (one stacked copy)."""

    layer: int
    component: str  # "attention" or "mlp"
    intervention: Intervention
    rows: slice

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.{COMPONENT_HOOKS[self.component]}"


def _edited(activation: torch.Tensor, edits: Sequence[Edit], means) -> torch.Tensor:
    """``activation`` [row, pos, d_model] with each edit applied to its rows; other rows untouched (a copy)."""
    changed = activation.clone()
    for edit in edits:
        mean = means[(edit.layer, edit.component)] if edit.intervention.kind == "mean" else None
        changed[edit.rows] = edit.intervention.apply(activation[edit.rows], mean)
    return changed


def _by_hook(edits: Sequence[Edit]) -> dict[str, list[Edit]]:
    grouped: dict[str, list[Edit]] = {}
    for edit in edits:
        grouped.setdefault(edit.hook_name, []).append(edit)
    return grouped


class TLRunner:
    """Forwards through the model's TransformerLens hooks (any bridge, a HookedTransformer)."""

    name = "transformer_lens"

    def __init__(self, model):
        self.model = model
        self.vocab_size = model.cfg.d_vocab

    def logits(self, tokens: torch.Tensor, attention_mask: torch.Tensor, edits: Sequence[Edit] = (),
               means=None) -> Float[torch.Tensor, "row pos vocab"]:
        def hook(activation, hook, *, edits):
            return _edited(activation, edits, means)

        fwd_hooks = [(name, functools.partial(hook, edits=group)) for name, group in _by_hook(edits).items()]
        with self.model.hooks(fwd_hooks=fwd_hooks):
            return self.model(tokens, attention_mask=attention_mask, return_type="logits", **forward_kwargs(self.model))


class HFRunner:
    """Forwards through the plain HF module tree of a bridge, changing the outputs of the HF modules
    behind ``hook_attn_out``/``hook_mlp_out``. Built by ``for_model``; check it before trusting it."""

    def __init__(self, executor: HFExecutor, vocab_size: int):
        self.executor = executor
        self.name = executor.name
        self.vocab_size = vocab_size

    @classmethod
    def for_model(cls, model, names: Sequence[str], attention: str | None = None) -> tuple["HFRunner | None", str]:
        """``(runner, "")``, or ``(None, why not)`` where some hook has no HF module output behind it."""
        executor, why_not = HFExecutor.for_model(model, names, attention)
        if executor is None:
            return None, why_not
        inputs = [name for name, (_, side) in executor.points.items() if side != "output"]
        if inputs:  # a contribution read at the next module's input cannot be changed by an output hook
            return None, f"{inputs[0]} is an HF module's input, not its output"
        return cls(executor, model.cfg.d_vocab), ""

    def logits(self, tokens: torch.Tensor, attention_mask: torch.Tensor, edits: Sequence[Edit] = (),
               means=None) -> Float[torch.Tensor, "row pos vocab"]:
        def hook(module, args, output, *, edits):
            if isinstance(output, tuple):  # attention modules return (output, weights, ...)
                return (_edited(output[0], edits, means),) + tuple(output[1:])
            return _edited(output, edits, means)

        with contextlib.ExitStack() as stack:
            for name, group in _by_hook(edits).items():
                module, _ = self.executor.points[name]
                handle = module.register_forward_hook(functools.partial(hook, edits=group))
                stack.callback(handle.remove)
            return self.executor.root(input_ids=tokens, attention_mask=attention_mask, use_cache=False).logits


def contribution_hooks(layers: Sequence[int]) -> list[str]:
    """The TL hook names every intervention on ``layers`` changes."""
    return [f"blocks.{layer}.{hook}" for layer in layers for hook in COMPONENT_HOOKS.values()]
