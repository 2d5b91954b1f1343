"""The causal step: what happens to the model's predictions when a sublayer's contribution changes.

``measure_effects`` runs, on one prompt set:

1. ``measure_gains`` (the gains beside the effects, from the same prompts and layers);
2. when ``mean`` is asked for, one pass summing each measured contribution over every measured
   token (``component_means``: the engine's passes, early stop and fast executor included);
3. per batch, one clean forward and the intervened ones (``intervene``): every (layer,
   component, intervention), ``stack`` of them per forward, each on its own copy of the batch
   stacked along the batch dimension. The early stop does not apply: the logits are needed.

Per prompt and padding excluded, against the clean forward of the same batch: Δloss (mean over
predicted positions of the next-token cross-entropy with minus without) and KL (mean over
positions of KL(clean ‖ intervened)); see ``effect_results`` for the glossary. Log-probabilities
are taken in float64 whatever the model's dtype (``_losses``), a few positions at a time.

Executors, as for the gains (``funnel_tl.measure.engine``): the interventions go through the
TransformerLens hooks (``intervene.TLRunner``), or through the plain HF modules behind them
(``intervene.HFRunner``, eager attention: the bridge's own), which also *replays* the clean
forward's layer outputs so that a change at layer L runs layers L onwards only, where that runner
proves itself on the run's first batch: on two of its prompts (the most padded and the longest),
every measured (layer, component), each with one of the interventions in turn, must give the TL
hooks' Δloss and KL to ``AGREEMENT``. Two prompts, not the engine's ``VERIFY_ROWS``: the check
costs 2 × 2 × layers forwards of them, against 2 × layers × interventions of every batch (measured
on SmolLM2 with 8 prompts, four rows made the check a quarter of the run). A run of one batch goes
through the TL hooks.

Cost: one clean forward per batch plus ``ceil(2 · layers · interventions / stack)`` forwards of
``stack`` copies, each from its first changed layer on where replayed.
``benchmarks/bench_effects.py`` measures it against ``measure_gains``, with and without replay,
stacked and unstacked.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from tqdm.auto import tqdm

from funnel_tl.components import EFFECT_COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.measure.distributed import broadcast_from_main, measure
from funnel_tl.measure.effect_checkpoints import (
    CHECKPOINT_SECONDS,
    CheckpointStore,
    checkpoint_settings,
    read_checkpoint,
    write_partial,
)
from funnel_tl.measure.engine import EXECUTORS, Engine, activation_bytes_per_token, counted_tokens, resolve_batch_size
from funnel_tl.measure.intervene import Edit, HFRunner, TLRunner, contribution_hooks
from funnel_tl.measure.interventions import COMPONENT_HOOKS, DEFAULT_INTERVENTIONS, Intervention, parse_interventions
from funnel_tl.measure.layers import resolve_layers
from funnel_tl.measure.streaming import TokenStream
from funnel_tl.models.architectures import plan_hooks
from funnel_tl.models.huggingface import measurable
from funnel_tl.models.identity import model_name
from funnel_tl.prompts.tokens import make_batches
from funnel_tl.results.effects import EffectResult
from funnel_tl.results.folders import check_label

# How closely the fast runner's Δloss and KL must equal the TL hooks' (relative, absolute): float32
# runs the same ops on the same weights (eager attention both ways; measured identical logits on
# the CPU), so 1e-4 leaves room for op order only, and 1e-5 nats is float32's rounding of
# ~10-nat cross-entropies; a wrong module is off by the effect itself. Half precision rounds every
# activation (float16 unit roundoff 4.9e-4, bfloat16 3.9e-3) in each path's own order.
AGREEMENT = {
    torch.float32: (1e-4, 1e-5),
    torch.float64: (1e-9, 1e-12),
    torch.float16: (5e-2, 2e-2),
    torch.bfloat16: (1e-1, 5e-2),
}
STACK_CHOICES = "an integer, at least 1, or auto"
# Copies per forward that stack="auto" stacks. On the CPU stacking buys nothing (measured by
# benchmarks/bench_effects.py: 2, 4 and 8 copies ran 0.97-1.24x the time of one, even where a
# forward is launch-bound) and each copy holds its logits; on a GPU it is not measured here.
AUTO_STACK = 1
# The float64 log-probabilities of a batch are taken this many floats at a time (a few positions of
# every prompt), so that their memory stays bounded whatever the batch, context and vocabulary.
LOSS_CHUNK_FLOATS = 2**23


# ---- the mean of each contribution ------------------------------------------------------------
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
    model,
    prompts,
    layers: int | Sequence[int] | None = None,
    batch_size: int | str = "auto",
    drop_first: int = 0,
    tokenizer=None,
    executor: str = "auto",
    progress: bool | None = None,
    max_tokens_per_prompt: int | str | None = None,
) -> ComponentMeans:
    """Every measured sublayer's contribution summed over every measured token of ``prompts`` (one pass).

    The ``mean`` intervention replaces a contribution by ``result.mean(component)[layer]``.
    ``layers`` as in ``measure_gains``; positions before ``drop_first`` are not measured tokens.

    >>> from funnel_tl import load_model
    >>> means = component_means(load_model("nano-2l", device="cpu"), "seed")  # doctest: +SKIP
    >>> means.mean("mlp").shape  # doctest: +SKIP
    (2, 64)
    """
    chosen = resolve_layers(layers, model.cfg.n_layers)
    reduction = ContributionSums(model, chosen)
    engine = Engine(model, reduction, executor)
    stream = TokenStream(model, prompts, drop_first, tokenizer, max_tokens_per_prompt, batch_size, engine.device)
    sums = {component: np.zeros((len(chosen), model.cfg.d_model)) for component in EFFECT_COMPONENTS}
    n_tokens = 0
    for _, batch_sums, counted in engine.run(
        stream.batches(), drop_first, progress, description=f"means {model_name(model)}"
    ):
        for component, suffix in COMPONENT_HOOKS.items():
            sums[component] += batch_sums[suffix].sum(axis=0)  # [layer, d_model]
        n_tokens += int(counted.sum())
    return ComponentMeans(chosen, sums, n_tokens)


# ---- Δloss and KL of one batch ------------------------------------------------------------------
Job = tuple[int, str, Intervention]  # (layer, component, intervention)


def batch_effects(
    runner,
    tokens: torch.Tensor,
    attention_mask: torch.Tensor,
    drop_first: int,
    jobs: Sequence[Job],
    means,
    stack: int,
    on_forward=None,
) -> dict[str, np.ndarray]:
    """Per prompt of one batch: ``clean_loss`` [batch], ``delta_loss`` and ``kl`` [batch, job] for ``jobs``.

    The clean forward first (its logits kept), then the jobs ``stack`` at a time, each on its own
    copy of the batch. ``on_forward()`` is called after each intervened forward (the progress bar).
    """
    n_rows, width = tokens.shape
    real = attention_mask.bool()
    counted = counted_tokens(attention_mask, drop_first)  # [batch, pos]: KL positions
    # Position t predicts token t + 1: the last position, and one before padding, predict nothing.
    predicted = counted & F.pad(real[:, 1:], (0, 1), value=False)  # [batch, pos]
    following = F.pad(tokens[:, 1:], (0, 1), value=0)  # [batch, pos]: token t + 1 (0: none)
    n_predicted, n_positions = predicted.sum(dim=1), counted.sum(dim=1)  # [batch]
    chunk = max(1, LOSS_CHUNK_FLOATS // max(1, n_rows * int(runner.vocab_size)))  # positions at a time

    clean = runner.logits(tokens, attention_mask)  # [batch, pos, vocab], the model's dtype
    clean_loss = (
        sum(_losses(clean, None, following, predicted, counted, positions)[0] for positions in _spans(width, chunk))
        / n_predicted
    )
    delta = torch.empty((n_rows, len(jobs)), dtype=torch.float64, device=tokens.device)
    kl = torch.empty_like(delta)
    for start in range(0, len(jobs), stack):
        group = jobs[start : start + stack]
        edits = [
            Edit(layer, component, intervention, slice(copy * n_rows, (copy + 1) * n_rows))
            for copy, (layer, component, intervention) in enumerate(group)
        ]
        copies = len(group)
        logits = runner.logits(tokens.repeat(copies, 1), attention_mask.repeat(copies, 1), edits, means)
        for copy in range(copies):
            mine = logits[copy * n_rows : (copy + 1) * n_rows]  # [batch, pos, vocab]
            sums = [
                _losses(clean, mine, following, predicted, counted, positions) for positions in _spans(width, chunk)
            ]
            delta[:, start + copy] = sum(ce for ce, _ in sums) / n_predicted
            # (a divergence is None only for the clean forward alone, never with ``mine`` given)
            kl[:, start + copy] = sum(part for _, part in sums if part is not None) / n_positions
        del logits
        if on_forward is not None:
            on_forward()
    out = {
        "clean_loss": clean_loss.cpu().numpy(),
        "delta_loss": delta.cpu().numpy(),
        "kl": kl.cpu().numpy(),
        "n_predicted": n_predicted.cpu().numpy(),
        "n_positions": n_positions.cpu().numpy(),
    }
    bad = ~(np.isfinite(out["delta_loss"]) & np.isfinite(out["kl"]))
    if bad.any() or not np.isfinite(out["clean_loss"]).all():
        raise _nonfinite(jobs, bad)
    return out


def _spans(width: int, chunk: int) -> list[slice]:
    return [slice(start, min(start + chunk, width)) for start in range(0, width, chunk)]


def _losses(
    clean: Float[torch.Tensor, "batch pos vocab"],
    changed: Float[torch.Tensor, "batch pos vocab"] | None,
    following,
    predicted: Bool[torch.Tensor, "batch pos"],
    counted: Bool[torch.Tensor, "batch pos"],
    positions: slice,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per row, over the ``positions``: the summed cross-entropy of the next tokens (of ``clean``
    alone when ``changed`` is None, else changed minus clean) and the summed KL(clean ‖ changed).

    In float64: in float32 a 49,152-word log-softmax moved SmolLM2's Δloss by ~1e-5 nats against
    the reference (measured), in float64 by 1e-16. Padding is left out by selection, so it cannot
    poison a sum.
    """
    zero = torch.zeros((), dtype=torch.float64, device=clean.device)
    target = following[:, positions, None]  # [batch, chunk, 1]
    clean_logp = F.log_softmax(clean[:, positions].double(), dim=-1)  # [batch, chunk, vocab]
    clean_ce = -clean_logp.gather(-1, target)[..., 0]  # [batch, chunk]
    if changed is None:
        return torch.where(predicted[:, positions], clean_ce, zero).sum(dim=1), None
    logp = F.log_softmax(changed[:, positions].double(), dim=-1)
    ce = -logp.gather(-1, target)[..., 0]
    # KL(clean ‖ changed) = Σ_v p(v) (log p(v) − log q(v)), the difference taken first: accurate for
    # the near-zero KL of a small effect.
    divergence = (clean_logp.exp() * (clean_logp - logp)).sum(dim=-1)  # [batch, chunk]
    return (
        torch.where(predicted[:, positions], ce - clean_ce, zero).sum(dim=1),
        torch.where(counted[:, positions], divergence, zero).sum(dim=1),
    )


def _nonfinite(jobs, bad: np.ndarray) -> FunnelError:
    if not bad.any():
        return FunnelError("the clean forward gives non-finite logits: try --dtype float32")
    job = jobs[int(np.argwhere(bad)[0][1])]
    layer, component, intervention = job
    return FunnelError(
        f"non-finite logits with {intervention.name} on {component} L{layer}: the model overflows; try --dtype float32"
    )


# ---- the runner: the TL hooks, or HF modules that prove themselves ------------------------------
def _verification_jobs(layers: Sequence[int], interventions) -> list[Job]:
    """Every (layer, component) once, the interventions in turn: each module and each kind is checked."""
    pairs = [(layer, component) for layer in layers for component in EFFECT_COMPONENTS]
    return [
        (layer, component, interventions[index % len(interventions)]) for index, (layer, component) in enumerate(pairs)
    ]


def _deviation(fast: dict[str, np.ndarray], truth: dict[str, np.ndarray], tolerance: tuple[float, float]) -> float:
    """Worst |fast − truth| / (rtol·|truth| + atol) over the per-prompt numbers: ≤ 1 agrees."""
    relative, absolute = tolerance
    worst = 0.0
    for key in ("clean_loss", "delta_loss", "kl"):
        excess = np.abs(fast[key] - truth[key]) / (relative * np.abs(truth[key]) + absolute)
        worst = max(worst, float(excess.max()) if excess.size else 0.0)
    return worst


def choose_runner(
    model, executor: str, layers, interventions, first_batch, drop_first: int, means, stack: int, several: bool
):
    """``(runner, why the fast one did not run or None)``: TLRunner, or an HFRunner that agrees with it."""
    tl = TLRunner(model)
    if executor == "transformer_lens":
        return tl, None  # as asked: nothing fell back
    if not several and executor == "auto":
        return tl, "a single batch: the TransformerLens check of a fast runner would be most of the run"
    fast, why_not = HFRunner.for_model(model, contribution_hooks(layers), attention=None)
    if fast is None:
        if executor == "hf":
            warnings.warn(
                f"the HF-module runner cannot run {model_name(model)} ({why_not}): "
                "intervening through TransformerLens hooks instead",
                stacklevel=3,
            )
        return tl, why_not
    rows = sorted({0, first_batch.tokens.shape[0] - 1})  # the batch is sorted by length: its most padded, its longest
    device = next(model.parameters()).device
    tokens, mask = first_batch.tokens[rows].to(device), first_batch.attention_mask[rows].to(device)
    jobs = _verification_jobs(layers, interventions)
    truth = batch_effects(tl, tokens, mask, drop_first, jobs, means, stack)
    try:
        got = batch_effects(fast, tokens, mask, drop_first, jobs, means, stack)
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # an HF module tree that cannot run as copied: the TL hooks still can
        why_not = f"the HF-module runner failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"
    else:
        dtype = next(model.parameters()).dtype
        deviation = _deviation(got, truth, AGREEMENT.get(dtype, (1e-2, 1e-2)))
        if deviation <= 1:
            return fast, None
        why_not = (
            f"the HF-module runner's first-batch effects differed from the TransformerLens hooks' "
            f"({deviation:.2g} times the tolerance {AGREEMENT.get(dtype, (1e-2, 1e-2))})"
        )
    warnings.warn(f"{model_name(model)}: {why_not}: intervening through TransformerLens hooks instead", stacklevel=3)
    return tl, why_not


# ---- batch and stack sizes ----------------------------------------------------------------------
def check_stack(stack) -> None:
    if isinstance(stack, str) and stack == "auto":
        return
    if isinstance(stack, bool) or not isinstance(stack, (int, np.integer)) or stack < 1:
        raise FunnelError(f"stack must be {STACK_CHOICES}, got {stack!r}")


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
    logits (``effects_bytes_per_token``).
    """
    check_stack(stack)
    copies = min(n_jobs, AUTO_STACK if stack == "auto" else int(stack))
    device = torch.device(device)
    if batch_size != "auto" or device.type != "cuda":
        return resolve_batch_size(batch_size, model, token_ids, device), copies
    free, _ = torch.cuda.mem_get_info(device)
    longest = max((len(ids) for ids in token_ids), default=1)
    per_token = effects_bytes_per_token(model.cfg, next(model.parameters()).element_size(), longest, copies)
    return effects_batch_size(free, per_token, longest, len(token_ids)), copies


# ---- the measurement ----------------------------------------------------------------------------
def measure_effects(
    model,
    prompts: str | Sequence[str] = "seed",
    interventions=DEFAULT_INTERVENTIONS,
    layers: int | Sequence[int] | None = None,
    definition: str = "seed",
    batch_size: int | str = "auto",
    drop_first: int = 0,
    tokenizer=None,
    progress: bool | None = None,
    intervals: bool = False,
    executor: str = "auto",
    stack: int | str = "auto",
    max_tokens_per_prompt: int | str | None = None,
    keep_texts: bool = True,
    means: ComponentMeans | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    label: str | None = None,
) -> EffectResult:
    """Δloss and KL of every intervention on every measured sublayer, with the gains beside them.

    ``interventions``: names (``"zero"``, ``"mean"``, ``"scale:S"``) or one comma-separated
    string; ``layers``, ``definition`` (of the gains), ``batch_size``, ``drop_first``,
    ``max_tokens_per_prompt`` and ``keep_texts`` as in ``measure_gains``. A prompt needs a token
    after position ``drop_first`` (a next token to predict). ``executor``: ``"auto"`` (the HF
    modules where they agree with the TL hooks on the first batch), ``"transformer_lens"`` or
    ``"hf"``. ``stack``: interventions per forward, each on its own copy of the batch (``"auto"``:
    ``AUTO_STACK``, 1: measured to win nothing on the CPU); changes no number beyond float rounding.
    ``intervals=True``: 95% intervals over prompts (``result.with_intervals()``, 2,000 resamples).
    ``means``: the contributions' means (``component_means``) when computed elsewhere (torchrun's
    ranks share one); by default computed here from ``prompts``.
    ``checkpoint``: an effects.json path. A finished file of the same settings is read back
    instead of measuring; an unfinished one is continued (its measured prompts kept); the file
    is written as the measurement goes (at most every ``CHECKPOINT_SECONDS``) and at the end;
    ``resume=False`` measures afresh whatever the file holds. ``label``: the name the result
    carries, as in ``measure_gains``. ``model`` may also be a transformers causal LM (bridged as
    ``measure_gains`` bridges it).

    >>> from funnel_tl import load_model, measure_effects
    >>> result = measure_effects(load_model("nano-2l", device="cpu"), "seed", intervals=True)  # doctest: +SKIP
    >>> result.effect("delta_loss", "zero", "mlp")  # doctest: +SKIP
    array([0.91, 0.43])
    """
    # Imported on use: looked up in its own module on each call (where tests replace it).
    from funnel_tl.measure.gains import measure_gains, prepare_tokens

    model = measurable(model, tokenizer, "measure_effects")  # a name or None refused in one line
    label = check_label(label)
    specs = parse_interventions(interventions)  # cheap checks first
    check_stack(stack)
    if executor not in EXECUTORS:
        raise FunnelError(f"unknown executor {executor!r}: choose {', '.join(EXECUTORS)}")
    chosen = resolve_layers(layers, model.cfg.n_layers)
    plan_hooks(model, definition)  # refuses what cannot be measured, before any pass
    truncation: dict = {}
    prompt_list, token_ids, pad_id = prepare_tokens(
        model, prompts, drop_first, tokenizer, max_tokens_per_prompt, truncation
    )
    short = next((i for i, ids in enumerate(token_ids) if len(ids) < drop_first + 2), None)
    if short is not None:
        raise FunnelError(
            f"prompt {short} has {len(token_ids[short])} tokens: a Δloss needs a next token to predict "
            f"after position {drop_first}; remove the prompt or lower --drop-first"
        )
    name = label or model_name(model)
    parameter = next(model.parameters())
    settings = checkpoint_settings(
        model, prompt_list, specs, chosen, definition, drop_first, max_tokens_per_prompt, parameter, label
    )
    done = read_checkpoint(checkpoint, settings, intervals) if resume else None
    if isinstance(done, EffectResult):
        return done

    gains = measure_gains(
        model,
        prompt_list,
        definition=definition,
        batch_size=batch_size,
        drop_first=drop_first,
        tokenizer=tokenizer,
        progress=progress,
        executor=executor,
        max_tokens_per_prompt=max_tokens_per_prompt,
        keep_texts=keep_texts,
        layers=chosen,
        label=label,
    )
    if means is None and any(spec.kind == "mean" for spec in specs):
        means = component_means(
            model, prompt_list, chosen, batch_size, drop_first, tokenizer, executor, progress, max_tokens_per_prompt
        )
    mean_tensors = means.tensors(parameter.device) if means is not None else None

    jobs: list[Job] = [
        (layer, component, spec) for spec in specs for component in EFFECT_COMPONENTS for layer in chosen
    ]
    n_prompts = len(prompt_list)
    store = CheckpointStore(n_prompts, len(jobs), done)
    remaining = [i for i in range(n_prompts) if not store.measured[i]]
    runner, why_not = TLRunner(model), None
    size = copies = None
    if remaining:
        size, copies = resolve_sizes(
            batch_size, stack, model, [token_ids[i] for i in remaining], parameter.device, len(jobs)
        )
        batches = [
            replace(batch, indices=[remaining[i] for i in batch.indices])
            for batch in make_batches([token_ids[i] for i in remaining], size, pad_token_id=pad_id)
        ]
        with torch.inference_mode():
            runner, why_not = choose_runner(
                model, executor, chosen, specs, batches[0], drop_first, mean_tensors, copies, several=len(batches) > 1
            )
            _run_batches(
                runner,
                batches,
                jobs,
                mean_tensors,
                copies,
                drop_first,
                store,
                progress,
                name,
                parameter.device,
                checkpoint=None if checkpoint is None else (checkpoint, settings),
            )

    provenance = dict(gains.provenance)
    provenance.update(
        {
            "executor": runner.name,
            "executor_fallback": why_not,
            "batch_size": int(size) if size is not None else None,
            "stack": int(copies) if copies is not None else None,
            "requested_stack": str(stack),
            "effect_settings": settings,
            "forwards_per_batch": (1 + math.ceil(len(jobs) / copies)) if copies else None,
            **({"mean_tokens": int(means.n_tokens)} if means is not None else {}),
            **({"resumed_prompts": int(n_prompts - len(remaining))} if len(remaining) < n_prompts else {}),
        }
    )
    provenance["gains_executor"] = gains.provenance.get("executor")
    result = store.result(
        model=name,
        n_layers=model.cfg.n_layers,
        layers=chosen,
        interventions=specs,
        prompts=tuple(prompt_list) if keep_texts else None,
        gains=gains,
        drop_first=drop_first,
        provenance=provenance,
    )
    if intervals and result.n_prompts >= 2:
        result = result.with_intervals()
    if checkpoint is not None:
        result.save(checkpoint)
    return result


def _run_batches(
    runner,
    batches,
    jobs,
    means,
    copies: int,
    drop_first: int,
    store: CheckpointStore,
    progress,
    name: str,
    device,
    checkpoint: tuple[str | Path, dict] | None = None,
) -> None:
    """Every batch's effects into ``store``; ``checkpoint`` ``(path, settings)``: an unfinished
    effects.json written every ``CHECKPOINT_SECONDS`` and when the run stops early (killed by
    Ctrl-C, out of memory...), so that nothing measured is lost."""
    forwards = math.ceil(len(jobs) / copies)
    bar = tqdm(
        total=len(batches) * forwards,
        desc=f"effects {name}",
        unit="forward",
        disable=not (progress if progress is not None else True),
    )
    written, unsaved = time.monotonic(), False
    try:
        for batch in batches:
            tokens, mask = batch.tokens.to(device), batch.attention_mask.to(device)
            try:
                values = batch_effects(
                    runner, tokens, mask, drop_first, jobs, means, copies, on_forward=lambda: bar.update(1)
                )
            except torch.cuda.OutOfMemoryError:
                raise FunnelError(
                    f"out of GPU memory on {len(batch.indices)} prompts of up to {tokens.shape[1]} "
                    f"tokens x {copies} stacked interventions: lower --batch-size or --stack"
                ) from None
            store.put(batch.indices, values)
            unsaved = True
            if checkpoint is not None and time.monotonic() - written > CHECKPOINT_SECONDS:
                write_partial(*checkpoint, name, store)
                written, unsaved = time.monotonic(), False
    except BaseException:
        if checkpoint is not None and unsaved:
            write_partial(*checkpoint, name, store)
        raise
    finally:
        bar.close()


# ---- torchrun -----------------------------------------------------------------------------------
def measure_effects_on_ranks(model, prompts: Sequence[str], current, **settings):
    """``measure_effects`` over torchrun's ranks: the prompts dealt out as for the gains
    (``distributed.measure``), the means summed over every rank first; the result on rank 0."""
    specs = parse_interventions(settings.get("interventions", DEFAULT_INTERVENTIONS))
    means = None
    if any(spec.kind == "mean" for spec in specs):
        keys = ("batch_size", "drop_first", "tokenizer", "max_tokens_per_prompt", "layers", "executor")
        means = broadcast_from_main(
            current,
            measure(component_means, model, prompts, current, **{k: settings[k] for k in keys if k in settings}),
        )
    return measure(measure_effects, model, prompts, current, means=means, **settings)
