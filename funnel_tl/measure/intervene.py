"""Forward passes with interventions (``funnel_tl.measure.interventions``) applied to sublayer contributions.

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
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float

from funnel_tl.measure.engine import HFExecutor, forward_kwargs
from funnel_tl.measure.interventions import COMPONENT_HOOKS, Intervention

# The most the clean forward's layer outputs may take to be replayed (see ``HFRunner``): a
# batch's residual stream at every layer, e.g. 280 MB for 8 prompts of 512 tokens of SmolLM2-135M.
REPLAY_BYTES = 2**30


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

    def logits(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor, edits: Sequence[Edit] = (), means=None
    ) -> Float[torch.Tensor, "row pos vocab"]:
        def hook(activation, hook, *, edits):
            return _edited(activation, edits, means)

        fwd_hooks = [(name, functools.partial(hook, edits=group)) for name, group in _by_hook(edits).items()]
        with self.model.hooks(fwd_hooks=fwd_hooks):
            return self.model(tokens, attention_mask=attention_mask, return_type="logits", **forward_kwargs(self.model))


class HFRunner:
    """Forwards through the plain HF module tree of a bridge, changing the outputs of the HF modules
    behind ``hook_attn_out``/``hook_mlp_out``. Built by ``for_model``; check it before trusting it.

    **Replay** (the cheaper exact scheme): a change at layer L leaves layers 0 … L−1 as they were, so
    the clean forward of a batch keeps what each decoder layer returned (``REPLAY_BYTES`` at most),
    and an intervened forward whose changes all sit at layer L or later runs only layers L onwards:
    layers before L return the clean output of layer L−1 instead of computing (they run in our
    private copy of the module tree, never the bridge's). The embedding, masks and position
    embeddings are still computed, the layers before L are not. The same batch gives layer L the
    same input bit for bit; the run's first-batch check against the TL hooks covers the replay too.
    """

    def __init__(
        self, executor: HFExecutor, vocab_size: int, d_model: int, layer_modules: Sequence[torch.nn.Module] | None
    ):
        self.executor = executor
        self.name = executor.name + ("+replay" if layer_modules else "")
        self.vocab_size, self.d_model = vocab_size, d_model
        self.layer_modules = list(layer_modules) if layer_modules else None  # the decoder layers, in order
        self.kept: list[torch.Tensor] | None = None  # the clean forward's layer outputs, [batch, pos, d_model] each

    @classmethod
    def for_model(
        cls, model, names: Sequence[str], attention: str | None = None, replay: bool = True
    ) -> tuple[HFRunner | None, str]:
        """``(runner, "")``, or ``(None, why not)`` where some hook has no HF module output behind it.
        ``replay``: also find the decoder layers (the HF modules that receive ``hook_resid_pre``)."""
        layers = [f"blocks.{layer}.hook_resid_pre" for layer in range(model.cfg.n_layers)] if replay else []
        executor, why_not = HFExecutor.for_model(model, list(names) + layers, attention)
        if executor is None and layers:  # no replay, then
            executor, why_not = HFExecutor.for_model(model, names, attention)
            layers = []
        if executor is None:
            return None, why_not
        inputs = [name for name in names if executor.points[name][1] != "output"]
        if inputs:  # a contribution read at the next module's input cannot be changed by an output hook
            return None, f"{inputs[0]} is an HF module's input, not its output"
        modules = [executor.points[name] for name in layers]
        if any(side != "input" for _, side in modules) or len({id(module) for module, _ in modules}) != len(modules):
            modules = []
        return cls(executor, model.cfg.d_vocab, model.cfg.d_model, [module for module, _ in modules]), ""

    def logits(
        self, tokens: torch.Tensor, attention_mask: torch.Tensor, edits: Sequence[Edit] = (), means=None
    ) -> Float[torch.Tensor, "row pos vocab"]:
        rows = tokens.shape[0]

        def edited(tensor, group):
            # OPT's fc2 returns [batch * pos, d_model]: edited as [batch, pos, d_model], handed back as it came.
            flat = tensor.ndim == 2
            changed = _edited(tensor.view(rows, -1, tensor.shape[-1]) if flat else tensor, group, means)
            return changed.view(tensor.shape) if flat else changed

        def hook(module, args, output, *, group):
            if isinstance(output, tuple):  # attention modules return (output, weights, ...)
                return (edited(output[0], group),) + tuple(output[1:])
            return edited(output, group)

        with contextlib.ExitStack() as stack:
            if not edits:
                self._keep_layer_outputs(stack, tokens)
            else:
                self._replay(stack, tokens, min(edit.layer for edit in edits))
            for name, group in _by_hook(edits).items():
                module, _ = self.executor.points[name]
                handle = module.register_forward_hook(functools.partial(hook, group=group))
                stack.callback(handle.remove)
            return self.executor.root(input_ids=tokens, attention_mask=attention_mask, use_cache=False).logits

    def _keep_layer_outputs(self, stack: contextlib.ExitStack, tokens: torch.Tensor) -> None:
        """During a clean forward: keep each decoder layer's output, if they fit in ``REPLAY_BYTES``."""
        self.kept = None
        if not self.layer_modules:
            return
        element = next(self.executor.root.parameters()).element_size()
        needed = len(self.layer_modules) * tokens.numel() * self.d_model * element
        if needed > REPLAY_BYTES:
            return
        kept: list = [None] * len(self.layer_modules)

        def keep(module, args, output, *, index):
            kept[index] = output

        for index, module in enumerate(self.layer_modules):
            stack.callback(module.register_forward_hook(functools.partial(keep, index=index)).remove)

        def publish():  # only a forward that ran through every layer leaves outputs to replay
            if all(isinstance(output, torch.Tensor) for output in kept):
                self.kept = kept

        stack.callback(publish)

    def _replay(self, stack: contextlib.ExitStack, tokens: torch.Tensor, first_changed: int) -> None:
        """Layers before ``first_changed`` return the kept output of the layer just before it."""
        if self.kept is None or not self.layer_modules or first_changed == 0:  # outputs are kept with the layers
            return
        clean = self.kept[first_changed - 1]  # [batch, pos, d_model]
        if tokens.shape[0] % clean.shape[0] or tokens.shape[1] != clean.shape[1]:
            return  # not copies of the batch the outputs were kept for
        entering = clean.repeat(tokens.shape[0] // clean.shape[0], 1, 1)  # [copies * batch, pos, d_model]
        for module in self.layer_modules[:first_changed]:
            module.forward = lambda *args, **kwargs: entering  # this private copy's layer, until the forward ends
            stack.callback(module.__dict__.pop, "forward", None)


def contribution_hooks(layers: Sequence[int]) -> list[str]:
    """The TL hook names every intervention on ``layers`` changes."""
    return [f"blocks.{layer}.{hook}" for layer in layers for hook in COMPONENT_HOOKS.values()]
