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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from funnel_tl.measure.effect_sizes import check_stack, resolve_sizes
from funnel_tl.measure.engine import counted_tokens
from funnel_tl.measure.intervene import Edit, HFRunner, TLRunner, contribution_hooks
from funnel_tl.measure.interventions import DEFAULT_INTERVENTIONS, Intervention, parse_interventions
from funnel_tl.measure.layers import layers_in_model
from funnel_tl.measure.means import ComponentMeans, component_means
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.models.architectures import plan_hooks
from funnel_tl.models.huggingface import measurable
from funnel_tl.models.identity import model_name
from funnel_tl.prompts.tokens import make_batches
from funnel_tl.results.effects import EffectResult

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

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
# The float64 log-probabilities of a batch are taken this many floats at a time (a few positions of
# every prompt), so that their memory stays bounded whatever the batch, context and vocabulary.
LOSS_CHUNK_FLOATS = 2**23


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


# ---- the measurement ----------------------------------------------------------------------------
def measure_effects(
    model: TransformerBridge | HookedTransformer | PreTrainedModel,
    prompts: str | Sequence[str] = "seed",
    interventions: str | Sequence[str] = DEFAULT_INTERVENTIONS,
    layers: int | Sequence[int] | None = None,
    definition: str = "seed",
    batch_size: int | str = "auto",
    drop_first: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
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
    options: MeasureOptions | None = None,
) -> EffectResult:
    """Δloss and KL of every intervention on every measured sublayer, with the gains beside them.

    Args:
        model: a bridge, a TL 3.x ``HookedTransformer`` or a transformers causal LM, as
            ``measure_gains`` takes it.
        prompts: ``"seed"``, a prompt file path, or a list of strings. A prompt needs a token
            after position ``drop_first`` (a next token to predict).
        interventions: names (``"zero"``, ``"mean"``, ``"scale:S"``) or one comma-separated string.
        layers: a layer, a list of layers (negative counts from the end) or None for all.
        definition: the definition of the gains beside the effects, as in ``measure_gains``.
        batch_size: prompts per forward, or ``"auto"`` (on CUDA: half the free memory with the
            stacked forwards and their logits, ``effects_bytes_per_token``).
        drop_first: leading positions neither measured nor predicted.
        tokenizer: the tokenizer to use; default the model's own.
        progress: a progress bar; None shows one.
        intervals: 95% intervals over prompts (``result.with_intervals()``, 2,000 resamples).
        executor: ``"auto"`` (the HF modules where they agree with the TL hooks on the first
            batch), ``"transformer_lens"`` or ``"hf"``.
        stack: interventions per forward, each on its own copy of the batch (``"auto"``:
            ``AUTO_STACK``, 1: measured to win nothing on the CPU); changes no number beyond
            float rounding.
        max_tokens_per_prompt: keep only the first tokens of longer prompts (a number or
            ``"context"``).
        keep_texts: keep the prompt texts in the result (False: their count and sha256 only).
        means: the contributions' means (``component_means``) when computed elsewhere
            (torchrun's ranks share one); by default computed here from ``prompts``.
        checkpoint: an effects.json path. A finished file of the same settings is read back
            instead of measuring; an unfinished one is continued (its measured prompts kept); the
            file is written as the measurement goes (at most every ``CHECKPOINT_SECONDS``) and
            at the end.
        resume: False measures afresh whatever ``checkpoint`` holds.
        label: the name the result carries, as in ``measure_gains``.
        options: ``definition``, ``layers``, ``batch_size``, ``drop_first``, ``executor``,
            ``max_tokens_per_prompt``, ``keep_texts`` and ``label`` as one ``MeasureOptions``
            (``by_position`` and ``chunk_size`` are not taken); the keywords then stay at their
            defaults.

    Returns:
        An ``EffectResult``: per-prompt Δloss and KL ``[prompt, intervention, component, layer]``
        (nats), the clean loss ``[prompt]``, and the ``GainResult`` of the same prompts and layers.

    >>> from funnel_tl import load_model, measure_effects
    >>> result = measure_effects(load_model("nano-2l", device="cpu"), "seed", intervals=True)  # doctest: +SKIP
    >>> result.effect("delta_loss", "zero", "mlp")  # doctest: +SKIP
    array([0.91, 0.43])
    """
    # Imported on use: looked up in its own module on each call (where tests replace it).
    from funnel_tl.measure.gains import measure_gains, prepare_tokens

    options = MeasureOptions.given(
        options,
        layers=layers,
        definition=definition,
        batch_size=batch_size,
        drop_first=drop_first,
        executor=executor,
        max_tokens_per_prompt=max_tokens_per_prompt,
        keep_texts=keep_texts,
        label=label,
    )  # every option checked once, the cheap ones before the model is looked at
    options.refuse(("by_position", "chunk_size"), "measure_effects")
    specs = parse_interventions(interventions)
    stack = check_stack(stack)
    model = measurable(model, tokenizer, "measure_effects")  # a name or None refused in one line
    chosen = layers_in_model(options.layers, model.cfg.n_layers)
    options = options.replace(layers=chosen)  # the gains beside the effects: the same true indices
    plan_hooks(model, options.definition)  # refuses what cannot be measured, before any pass
    truncation: dict = {}
    prompt_list, token_ids, pad_id = prepare_tokens(model, prompts, options, tokenizer, truncation)
    drop_first = options.drop_first
    short = next((i for i, ids in enumerate(token_ids) if len(ids) < drop_first + 2), None)
    if short is not None:
        raise FunnelError(
            f"prompt {short} has {len(token_ids[short])} tokens: a Δloss needs a next token to predict "
            f"after position {drop_first}; remove the prompt or lower --drop-first"
        )
    name = options.label or model_name(model)
    parameter = next(model.parameters())
    settings = checkpoint_settings(model, prompt_list, specs, chosen, options, parameter)
    done = read_checkpoint(checkpoint, settings, intervals) if resume else None
    if isinstance(done, EffectResult):
        return done

    gains = measure_gains(model, prompt_list, tokenizer=tokenizer, progress=progress, options=options)
    if means is None and any(spec.kind == "mean" for spec in specs):
        means = component_means(model, prompt_list, options, tokenizer, progress)
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
            options.batch_size, stack, model, [token_ids[i] for i in remaining], parameter.device, len(jobs)
        )
        batches = [
            replace(batch, indices=[remaining[i] for i in batch.indices])
            for batch in make_batches([token_ids[i] for i in remaining], size, pad_token_id=pad_id)
        ]
        with torch.inference_mode():
            runner, why_not = choose_runner(
                model,
                options.executor,
                chosen,
                specs,
                batches[0],
                drop_first,
                mean_tensors,
                copies,
                several=len(batches) > 1,
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
        prompts=tuple(prompt_list) if options.keep_texts else None,
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
def measure_effects_on_ranks(
    model,
    prompts: Sequence[str],
    current,
    options: MeasureOptions,
    interventions=DEFAULT_INTERVENTIONS,
    tokenizer=None,
    **settings: Any,
) -> EffectResult | None:
    """``measure_effects`` over torchrun's ranks: the prompts dealt out as for the gains
    (``distributed.measure``), the means summed over every rank first; the result on rank 0.

    ``options``: checked once, by the caller, for every rank; ``settings``: ``measure_effects``'s
    other keywords (``stack``, ``progress``, ``intervals``)."""
    specs = parse_interventions(interventions)
    means = None
    if any(spec.kind == "mean" for spec in specs):
        means = broadcast_from_main(
            current,
            measure(component_means, model, prompts, current, options=options, tokenizer=tokenizer),
        )
    return measure(
        measure_effects,
        model,
        prompts,
        current,
        options=options,
        tokenizer=tokenizer,
        interventions=[spec.name for spec in specs],
        means=means,
        **settings,
    )
