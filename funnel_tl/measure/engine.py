"""The measurement engine: batches of tokens in, per-prompt sums out, for gains and heads alike.

A *reduction* (``gains.GainSums``, ``heads.HeadSums``) says which activations a pass reads — TL hook
names, ``blocks.{layer}.{suffix}`` — and turns each into small per-token tensors the moment it
fires (norms ``[batch, pos]``, per-head statistics ``[batch, pos, head]``); nothing of size
layers × batch × pos × d_model is ever held. The engine runs the passes:

- **early stop**: a pass stops as soon as the last activation it reads has fired (a private
  exception raised from that hook), so the final LayerNorm and the unembedding never run, nor
  the layers after the last one asked for;
- **one transfer per batch**: the reduction's per-prompt sums stay on the device until the batch
  is done, then move to the host in one copy; that copy is also the batch's one finiteness check
  (a non-finite activation makes its prompt's sum non-finite), and only then is the culprit
  looked for, on the device tensors still held;
- **hooks attached once per run**, not per batch.

Executors. TransformerLens' hook names are the interface and the truth: ``TLExecutor`` reads
them through the model's own hooks (any bridge, a ``HookedTransformer``, any family). The bridge's
forward costs ~3× HuggingFace's in Python overhead (a wrapper call per component, a second
LayerNorm for ``hook_normalized``, attention rebuilt from split Q/K/V), which dominates whenever
kernels are fast — a GPU at research batch sizes, a small model on a CPU. ``HFExecutor`` runs the
plain HuggingFace module tree inside the bridge instead (a shallow copy of it with every bridge
wrapper replaced by the HF module it wraps: the same parameter tensors, no second copy of the
weights), with torch hooks on the HF module whose input or output *is* each read TL hook point
(found by identity of the bridge's ``HookPoint`` objects, aliases resolved by TransformerLens).
It is used only where it proves itself on every run: the first batch is read through the TL
hooks (those sums are the ones kept), and the fast executor's sums for ``VERIFY_ROWS`` of its
prompts must equal them (``AGREEMENT_TOLERANCE``); SDPA attention is tried first, then the
bridge's eager attention; else the run warns, records why, and reads everything through
TransformerLens. A read with no HF module behind it, hooks already attached to the hook points
(the caller's or an adapter's), a HookedTransformer, patched or accelerate-dispatched module
forwards, a run of a single batch: all go through TransformerLens. ``Engine.executor_name`` and
``Engine.fallback`` say which ran and why (``provenance["executor"]``, ``["executor_fallback"]``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import Protocol

import einops
import numpy as np
import torch
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from funnel_tl.errors import FunnelError
from funnel_tl.models.identity import model_name
from funnel_tl.prompts.tokens import Batch

# Off only to prove the early stop by timing it (benchmarks/bench_gains.py) and to test that it
# changes no number: the forward then runs on through the final LayerNorm and the unembedding.
STOP_EARLY = True

# How closely the fast executor's first-batch sums must equal the TransformerLens hooks'. Both run
# the same HF weights and ops up to order (the bridge rebuilds attention from split Q/K/V): float32
# sums of norms agree to ~1e-7 measured, so 1e-6 leaves room for order only, while a wrong module
# is off by O(1). Half precision rounds every activation (float16 unit roundoff 4.9e-4, bfloat16
# 3.9e-3) in a different order in each path, over many layers: the tolerances of the fp16 GPU check.
AGREEMENT_TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-9, torch.float16: 1e-2, torch.bfloat16: 5e-2}

# The HF attention implementations the fast executor tries, in order: SDPA (one fused kernel, what
# a bare HF forward uses) and the bridge's own eager attention (the same op order as the TL path).
FAST_ATTENTION = ("sdpa", None)
# Prompts of the first batch on which a fast executor is checked against the TL hooks (see
# ``Engine._first_agreeing``): enough to cover padded and unpadded rows, few enough to cost little.
VERIFY_ROWS = 4


class Reduction(Protocol):
    """What a pass reads and how each read becomes per-prompt sums (see ``gains.GainSums``)."""

    def reads(self, first: bool) -> list[tuple[int, str]]:
        """``(layer, hook suffix)`` pairs to read; ``first``: the run's first batch (extra checks)."""

    def start(
        self, batch: Batch, tokens: torch.Tensor, attention_mask: torch.Tensor, counted: torch.Tensor, first: bool
    ) -> None:
        """A new batch begins; ``counted`` ``[batch, pos]`` marks the tokens that count."""

    def read(self, layer: int, suffix: str, activation: torch.Tensor) -> None:
        """One read activation, as it fires."""

    def finish(self) -> dict[str, torch.Tensor]:
        """The batch's per-prompt sums, each ``[batch, ...]``, still on the device."""

    def commit(self) -> None:
        """The pass just finished is part of the result (not a fast executor's check): keep whatever
        the reduction collects beyond the per-prompt sums (e.g. ``positions``' sums by position)."""

    def raise_nonfinite(self) -> None:
        """Called when a batch's sums are not finite: raise a FunnelError naming where it arose."""


class _PassComplete(Exception):
    """Raised from the hook on the last activation a pass reads, to skip the rest of the forward."""


def prompt_sums(
    values: Float[torch.Tensor, "layer batch pos *rest"], counted: Bool[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "batch layer *rest"]:
    """Per-token values summed over each prompt's counted tokens: ``[layer, batch, pos, ...]`` →
    ``[batch, layer, ...]``.

    The per-batch reduction of every measurement (a per-position reduction would sit beside it).
    Masked by selection, not by multiplying with the mask: a non-finite value at a padded position
    must not poison its prompt's sum (0 × inf is NaN), and a counted one must.
    """
    mask = counted.reshape(1, *counted.shape, *([1] * (values.ndim - 3)))  # [1, batch, pos, 1...]
    kept = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return einops.reduce(kept, "layer batch pos ... -> batch layer ...", "sum")


def counted_tokens(attention_mask: torch.Tensor, drop_first: int) -> Bool[torch.Tensor, "batch pos"]:
    """Real (unpadded) tokens at position ``drop_first`` or later."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return attention_mask.bool() & (positions >= drop_first)[None, :]  # [batch, pos]


def forward_kwargs(model) -> dict:
    """Beyond tokens and mask: the bridge (it has an architecture ``adapter``) hands extra keywords to
    its HF model, which should build no KV cache; ``HookedTransformer.forward`` takes none."""
    return {"use_cache": False} if hasattr(model, "adapter") else {}


def _out_of_memory(batch: Batch, tokens: torch.Tensor) -> FunnelError:
    return FunnelError(
        f"out of GPU memory on a batch of {len(batch.indices)} prompts of up to {tokens.shape[1]} tokens: "
        "lower --batch-size"
    )


class TLExecutor:
    """Reads through the model's own TransformerLens hooks (the truth, and the path for every model)."""

    name = "transformer_lens"

    def __init__(self, model):
        self.model = model

    @contextlib.contextmanager
    def attached(self, names: Sequence[str], on_read: Callable[[int, torch.Tensor], None]):
        """Hooks on ``names`` for the duration; each activation goes to ``on_read(index in names, activation)``."""

        def hook(activation, hook, *, index):
            on_read(index, activation[0] if isinstance(activation, tuple) else activation)

        fwd_hooks = [(name, functools.partial(hook, index=index)) for index, name in enumerate(names)]
        with self.model.hooks(fwd_hooks=fwd_hooks):
            yield

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.model(tokens, attention_mask=attention_mask, return_type=None, **forward_kwargs(self.model))


class HFExecutor:
    """Reads at the HF modules behind the TL hook points, running the plain HF module tree.

    Built by ``HFExecutor.for_model``, which returns None where it cannot map every read.
    """

    name = "hf"

    def __init__(self, root: torch.nn.Module, points: dict[str, tuple[torch.nn.Module, str]], heads_shape):
        self.root = root  # the unwrapped HF model (a shallow copy sharing the bridge's parameters)
        self.points = points  # hook name -> (HF module in root, "input" | "output")
        self.heads_shape = heads_shape  # (n_heads, d_head): hook_z is the output projection's input, per head
        self.tokens_shape: tuple[int, ...] = ()  # (batch, pos) of the forward running: see _unflattened

    @classmethod
    def for_model(cls, model, names: Sequence[str], attention: str | None = None) -> tuple[HFExecutor | None, str]:
        """``(executor, "")``, or ``(None, why not)`` where some read has no HF module behind it.

        ``attention``: an HF attention implementation for the copy (e.g. ``"sdpa"``), None to keep
        the bridge's (eager). The copy then gets its own config; the bridge's is left alone.
        """
        if not hasattr(model, "adapter") or "original_model" not in model.__dict__:
            return None, "not a TransformerBridge"
        try:
            # Imported on use: TransformerLens takes seconds to import (not needed by `--help`).
            from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
        except ImportError:  # pragma: no cover - TransformerLens without the bridge
            return None, "no TransformerBridge in this TransformerLens"
        hf_model = model.__dict__["original_model"]
        if getattr(hf_model, "hf_device_map", None):
            return None, "the model is spread over devices (device_map)"
        hook_dict = model.hook_dict
        if any(point._forward_hooks or point._forward_pre_hooks for point in hook_dict.values()):
            return None, "hooks are attached to the model's hook points (the caller's, or its adapter's own)"
        owners: dict[int, tuple] = {}  # id(HookPoint) -> (HF module it belongs to, "input" | "output")
        for component in model.modules():
            if isinstance(component, GeneralizedComponent):
                original = getattr(component, "original_component", None)
                if isinstance(original, torch.nn.Module):
                    for attribute, side in (("hook_in", "input"), ("hook_out", "output")):
                        point = component._modules.get(attribute)
                        if point is not None:
                            owners.setdefault(id(point), (original, side))
        clones: dict[int, torch.nn.Module] = {}
        try:
            root = _unwrapped(hf_model, clones, GeneralizedComponent)
        except _Unmappable as reason:
            return None, str(reason)
        points = {}
        for name in names:
            point = hook_dict.get(name)
            owner = owners.get(id(point)) if point is not None else None
            if owner is None or id(owner[0]) not in clones:
                return None, f"no HF module behind {name}"
            points[name] = (clones[id(owner[0])], owner[1])
        if attention is not None:
            config = getattr(hf_model, "config", None)
            if config is None:
                return None, "the HF model has no config"
            own = copy.copy(config)
            own._attn_implementation = attention
            for clone in clones.values():
                if clone.__dict__.get("config") is config:
                    clone.__dict__["config"] = own
        cfg = model.cfg
        executor = cls(root, points, (cfg.n_heads, cfg.d_head))
        executor.name = f"hf-{attention}" if attention else "hf"
        return executor, ""

    @contextlib.contextmanager
    def attached(self, names: Sequence[str], on_read: Callable[[int, torch.Tensor], None]):
        handles = []
        try:
            for index, name in enumerate(names):
                module, side = self.points[name]
                reshape = self.heads_shape if name.endswith("attn.hook_z") else None
                if side == "input":

                    def pre_hook(module, args, kwargs, *, index=index, reshape=reshape):
                        # HF decoder layers take the stream first, or by name when called with keywords.
                        activation = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
                        on_read(index, _heads(self._unflattened(activation), reshape))

                    handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
                else:

                    def hook(module, args, output, *, index=index, reshape=reshape):
                        activation = output[0] if isinstance(output, tuple) else output
                        on_read(index, _heads(self._unflattened(activation), reshape))

                    handles.append(module.register_forward_hook(hook))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> None:
        self.tokens_shape = tuple(tokens.shape)
        self.root(input_ids=tokens, attention_mask=attention_mask, use_cache=False)

    def _unflattened(self, activation: torch.Tensor) -> torch.Tensor:
        """``[batch·pos, d]`` as ``[batch, pos, d]``: some HF layers (OPT's decoder layer in
        transformers 5.x) flatten the stream before their MLP, so its norm and MLP read 2-D
        tensors where TransformerLens' hooks give 3-D ones. Row-major, as ``reshape(-1, d)`` made it."""
        if activation.dim() == 2 and len(self.tokens_shape) == 2:
            batch, pos = self.tokens_shape
            if activation.shape[0] == batch * pos:
                return activation.view(batch, pos, activation.shape[-1])  # [batch, pos, d]
        return activation


def _heads(activation: torch.Tensor, shape) -> torch.Tensor:
    """The output projection's input ``[batch, pos, head·d_head]`` as TL's hook_z ``[batch, pos, head, d_head]``."""
    return activation if shape is None else activation.unflatten(-1, shape)


class _Unmappable(Exception):
    pass


_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def _unwrapped(module: torch.nn.Module, clones: dict, wrapper_type) -> torch.nn.Module:
    """A shallow copy of ``module``'s tree with every bridge wrapper replaced by the HF module it wraps.

    Parameters and buffers are the very tensors of the bridge (shared dicts of them are copied,
    the tensors are not); hooks start empty, so ours never reach the bridge's modules.
    ``clones`` maps id(original HF module) -> its copy.
    """
    while isinstance(module, wrapper_type):
        module = module.original_component
    if id(module) in clones:
        return clones[id(module)]
    if "forward" in module.__dict__ or hasattr(module, "_hf_hook"):
        raise _Unmappable(f"{type(module).__name__}.forward is patched (accelerate or another library)")
    clone = copy.copy(module)
    clones[id(module)] = clone
    for attribute in _HOOK_DICTS:
        if attribute in module.__dict__:
            clone.__dict__[attribute] = OrderedDict()
    clone.__dict__["_parameters"] = dict(module._parameters)
    clone.__dict__["_buffers"] = dict(module._buffers)
    clone.__dict__["_modules"] = {
        name: None if child is None else _unwrapped(child, clones, wrapper_type)
        for name, child in module._modules.items()
    }
    return clone


def _agreement(fast: dict[str, torch.Tensor], truth: dict[str, torch.Tensor]) -> float:
    """Worst relative deviation of the fast sums from the TL sums, each relative to its tensor's scale.

    Sums of norms are positive, so each element is compared with itself; signed sums (head
    projections) with the largest magnitude of their tensor, as a near-zero one has no relative error.
    """
    worst = 0.0
    for key, expected in truth.items():
        got, expected = fast[key].double(), expected.double()
        scale = expected.abs()
        if bool((expected < 0).any()):
            scale = torch.full_like(scale, float(scale.max()))
        error = (got - expected).abs() / scale.clamp_min(torch.finfo(torch.float64).tiny)
        error = torch.where((got == expected), torch.zeros_like(error), error)  # 0/0 where both are 0
        worst = max(worst, float(error.max()) if error.numel() else 0.0)
    return worst


class Engine:
    """Runs a reduction over batches with the fastest executor that proves itself (see the module docstring).

    ``executor`` (as ``MeasureOptions`` checked it): ``"auto"`` (the HF module tree where it maps
    and agrees, else TransformerLens), ``"transformer_lens"`` (always the TL hooks) or ``"hf"`` (as
    auto, but say so loudly if it cannot be used). After a run, ``executor_name`` says which ran
    and ``fallback`` why the fast one did not (None if it did); both go into the provenance.
    """

    def __init__(self, model, reduction: Reduction, executor: str = "auto"):
        self.model, self.reduction, self.requested = model, reduction, executor
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.executor_name = TLExecutor.name
        self.fallback: str | None = None
        self.agreement: float | None = None

    def _names(self, first: bool) -> tuple[list[str], list[tuple[int, str]]]:
        reads = self.reduction.reads(first)
        return [f"blocks.{layer}.{suffix}" for layer, suffix in reads], reads

    def _pass(
        self, executor, reads, batch: Batch, tokens, attention_mask, counted, first: bool, commit: bool = True
    ) -> dict[str, torch.Tensor]:
        """One forward of ``batch`` through ``executor`` (its hooks already attached for ``reads``).

        ``commit``: the pass is part of the result (False for a fast executor's check).
        """
        self.reduction.start(batch, tokens, attention_mask, counted, first)
        self._fired.clear()
        self._reads = reads
        try:
            executor.forward(tokens, attention_mask)
        except _PassComplete:
            pass
        except torch.cuda.OutOfMemoryError:
            raise _out_of_memory(batch, tokens) from None
        if len(self._fired) < len(reads):
            missing = next(
                f"blocks.{layer}.{suffix}" for index, (layer, suffix) in enumerate(reads) if index not in self._fired
            )
            raise FunnelError(
                f"{model_name(self.model)}: hook {missing} did not fire: this architecture's hooks are not in the "
                "standard order, so its gains cannot be read; please report it"
            )
        sums = self.reduction.finish()
        if commit:
            self.reduction.commit()
        return sums

    def _on_read(self, index: int, activation: torch.Tensor) -> None:
        layer, suffix = self._reads[index]
        self.reduction.read(layer, suffix, activation)
        self._fired.add(index)
        if STOP_EARLY and len(self._fired) == len(self._reads):
            raise _PassComplete

    def run(
        self,
        batches: Iterable[Batch],
        drop_first: int = 0,
        progress: bool | None = None,
        description: str = "",
        total: int | Callable[[], int | None] | None = None,
    ) -> Iterator[tuple[Batch, dict[str, np.ndarray], np.ndarray]]:
        """Yield ``(batch, per-prompt sums as float64 arrays [batch, ...], counted tokens per prompt)``.

        ``batches`` may be a lazy iterable (a streamed corpus, ``gains.measure_gains``): it is read
        one batch ahead of the batch being measured, never further, and the fast executor is
        checked once, on the run's first batch. ``total``: the number of batches for the
        progress bar where ``batches`` has no length, or a function that tells it once it is
        known (``TokenStream.known_total``; asked at each batch until it answers).
        """
        self._fired: set[int] = set()
        first_names, first_reads = self._names(first=True)
        names, reads = self._names(first=False)
        tl = TLExecutor(self.model)
        learn_total = total if callable(total) else None
        known = None if callable(total) else total
        if known is None and isinstance(batches, Sized):
            known = len(batches)
        stream = iter(batches)
        # Two batches looked at before the run starts: whether it is a single one decides the executor.
        ahead = list(itertools.islice(stream, 2))
        several = len(ahead) > 1
        stream = itertools.chain(ahead, stream)
        # One batch: the TL pass that checks a fast executor would already be the whole run.
        fast_wanted = self.requested != "transformer_lens" and several
        candidates = self._candidates(names) if fast_wanted else iter(())
        if not fast_wanted and self.requested != "transformer_lens":
            self.fallback = "a single batch: the TransformerLens pass that checks a fast executor is the whole run"
        show = progress if progress is not None else several
        with torch.inference_mode(), contextlib.ExitStack() as stack:
            executor = tl
            bar = tqdm(stream, desc=description, unit="batch", total=known, disable=not show)
            for number, batch in enumerate(bar):
                if bar.total is None and learn_total is not None and (learnt := learn_total()) is not None:
                    bar.total = learnt  # the stream has batched its last chunk: an ETA from here
                    bar.refresh()
                tokens = batch.tokens.to(self.device)
                attention_mask = batch.attention_mask.to(self.device)
                counted = counted_tokens(attention_mask, drop_first)
                if number == 0:
                    # The truth for the first batch (with the reduction's first-batch checks), then each
                    # fast executor in turn until one agrees with it.
                    with tl.attached(first_names, self._on_read):
                        sums = self._pass(tl, first_reads, batch, tokens, attention_mask, counted, True)
                    executor = (
                        self._first_agreeing(candidates, names, reads, sums, batch, tokens, attention_mask, counted)
                        or tl
                    )
                    self.executor_name = executor.name
                    if several:
                        stack.enter_context(executor.attached(names, self._on_read))
                else:
                    sums = self._pass(executor, reads, batch, tokens, attention_mask, counted, False)
                # Counted tokens from the host copy of the mask: no second transfer.
                yield batch, self._to_host(sums), counted_tokens(batch.attention_mask, drop_first).sum(dim=1).numpy()

    def _candidates(self, names: list[str]) -> Iterator[HFExecutor]:
        """Fast executors to try, fastest first, each built only if the one before it disagreed."""
        for attention in FAST_ATTENTION:
            fast, why_not = HFExecutor.for_model(self.model, names, attention)
            if fast is None:
                self.fallback = why_not
                if self.requested == "hf":
                    warnings.warn(
                        f"the HF-module executor cannot run {model_name(self.model)} ({why_not}): "
                        "reading through TransformerLens hooks instead",
                        stacklevel=4,
                    )
                return
            yield fast

    def _first_agreeing(self, candidates, names, reads, truth, batch, tokens, attention_mask, counted):
        """The first fast executor whose sums agree with the TL hooks' ``truth`` for the first batch.

        Checked on ``VERIFY_ROWS`` of the batch's prompts (its shortest ones, the most padded, and
        its longest), at the batch's padded width: each prompt's sums depend on its own row only,
        so they must equal the TL sums of the same rows; the rest of the first batch would only
        repeat the check at the price of a whole extra pass.
        """
        tolerance = AGREEMENT_TOLERANCE.get(self.dtype, 1e-2)
        n_rows = len(batch.indices)
        rows = sorted(set(range(min(VERIFY_ROWS - 1, n_rows))) | {n_rows - 1})
        index = torch.tensor(rows, device=tokens.device)
        part = Batch(
            indices=[batch.indices[row] for row in rows],
            tokens=batch.tokens[rows],
            attention_mask=batch.attention_mask[rows],
        )
        expected = {key: values[index] for key, values in truth.items()}  # [rows, ...]
        failures = []
        for fast in candidates:
            try:
                with fast.attached(names, self._on_read):
                    sums = self._pass(
                        fast, reads, part, tokens[index], attention_mask[index], counted[index], False, commit=False
                    )
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as error:  # an HF module tree that cannot run as copied (or whose hooks never
                # fire): the TL path can still read the model
                failures.append(f"{fast.name} failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}")
                continue
            deviation = _agreement({key: sums[key] for key in expected}, expected)
            self.agreement = deviation if self.agreement is None else min(self.agreement, deviation)
            if deviation <= tolerance:
                self.fallback = None
                return fast
            failures.append(f"{fast.name} by {deviation:.2g}")
        if failures:
            self.fallback = (
                f"the fast executors' first batch differed from the TransformerLens hooks' "
                f"({'; '.join(failures)}; relative deviation allowed {tolerance:g})"
            )
            warnings.warn(
                f"{model_name(self.model)}: {self.fallback}: reading through TransformerLens hooks instead",
                stacklevel=4,
            )
        return None

    def _to_host(self, sums: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """One copy of every sum to the host, and with it the batch's one finiteness check."""
        flat = torch.cat([values.reshape(-1).double() for values in sums.values()]).cpu().numpy()
        if not np.isfinite(flat).all():
            self.reduction.raise_nonfinite()
            raise FunnelError(f"non-finite activation in {model_name(self.model)}")  # raise_nonfinite found none
        out, offset = {}, 0
        for key, values in sums.items():
            out[key] = flat[offset : offset + values.numel()].reshape(values.shape)
            offset += values.numel()
        return out


# ---- batch size ---------------------------------------------------------------------------------
CPU_BATCH_SIZE = 8  # on the CPU larger batches buy nothing measurable and pad more
AUTO_MEMORY_FRACTION = 0.5  # of the free memory, for activations: the rest absorbs allocator slack
MAX_AUTO_BATCH_SIZE = 1024


def activation_bytes_per_token(cfg, element_size: int, longest: int) -> int:
    """Transient memory of a forward per token, an upper estimate from the model's shape.

    The residual stream and its few live copies (~8 × d_model), the MLP's hidden activations
    before and after the nonlinearity (~3 × d_mlp), and eager attention's scores and pattern,
    n_heads × (longest sequence) per token, ×3 for the softmax's temporaries. Float32 norms and
    sums add a few bytes per token and layer, counted as 64 × n_layers.
    """
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    per_token = element_size * (8 * cfg.d_model + 3 * d_mlp + 3 * cfg.n_heads * longest)
    return int(per_token + 64 * cfg.n_layers)


def auto_batch_size(free_bytes: int, bytes_per_token: int, longest: int, n_prompts: int) -> int:
    """Prompts per batch filling ``AUTO_MEMORY_FRACTION`` of ``free_bytes`` with tokens of ``longest`` length.

    Pure arithmetic, so it can be tested without a GPU:

    >>> auto_batch_size(free_bytes=8 * 2**30, bytes_per_token=100_000, longest=128, n_prompts=10_000)
    335
    >>> auto_batch_size(free_bytes=2**20, bytes_per_token=100_000, longest=128, n_prompts=10)
    1
    """
    tokens = int(AUTO_MEMORY_FRACTION * free_bytes) // max(1, bytes_per_token)
    return max(1, min(tokens // max(1, longest), n_prompts, MAX_AUTO_BATCH_SIZE))


def resolve_batch_size(
    batch_size: int | str, model, token_ids: Sequence[Sequence[int]], device: torch.device | str
) -> int:
    """The batch size to use: ``batch_size`` as ``MeasureOptions`` checked it, with ``"auto"`` a token
    budget from the free GPU memory on CUDA and ``CPU_BATCH_SIZE`` elsewhere."""
    if batch_size != "auto":
        return int(batch_size)
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH_SIZE
    free, _ = torch.cuda.mem_get_info(device)
    element_size = next(model.parameters()).element_size()
    longest = max((len(ids) for ids in token_ids), default=1)
    return auto_batch_size(free, activation_bytes_per_token(model.cfg, element_size, longest), longest, len(token_ids))
