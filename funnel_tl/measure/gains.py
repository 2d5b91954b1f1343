"""Per-layer gains from hooked activations: hooks → per-token norms → per-prompt sums.

One forward pass per batch reads only the hooks the chosen definition needs — the selection
``run_with_cache(names_filter=...)`` would make — but each activation is reduced to its per-token
float32 norm ‖·‖ over d_model the moment its hook fires (half-precision squares overflow past
|x| = 256, and massive activations exceed that). One hook's per-layer norms ``[batch, pos]`` are
then stacked into ``[layer, batch, pos]`` and summed over each prompt's counted tokens
(``engine.prompt_sums``).

Why not ``run_with_cache`` and reduce afterwards: the cache holds every hooked activation of every
layer at once, hooks × layers × batch × pos × d_model — for Pythia-1.4B's 6 hooks × 24 layers,
144 copies of the residual stream, more than the forward pass itself ever holds (its peak is
about one layer plus the logits). Reduced as they fire, the hooks add [batch, pos] per hook, and
no activation outlives its block. The numbers are the same: the same tensors, the same float32
reduction (tests compare against ``run_with_cache`` + ``token_norms`` and the seed's HF hooks).

Beside the definition's own hooks, every pass reads what both definitions and a post-normed
block need and sums every norm twice, over all counted tokens and from position 1
(``funnel_tl.measure.reads``), and counts per-token gains into fixed histograms for the medians
(``funnel_tl.measure.medians``): a few more norms and one reduction per batch, nothing per token kept.

The passes themselves are run by ``funnel_tl.measure.engine`` (``GainSums`` below is the gains' reduction):
the pass stops right after the last hook it reads, so the final LayerNorm and the unembedding
never run; sums move to the host once per batch; and where the TL hook points have HF modules
behind them, the plain HF module tree runs instead of the bridge's wrappers, checked on every run
against the TL hooks (see the engine's docstring). Prompts are read a chunk at a time
(``funnel_tl.measure.streaming``: memory flat in the corpus size) and batched by length within it
(``prompts.make_batches``), so little compute goes to padding; results come back in the caller's
order, and the padding fraction, batch size and executor are recorded in the provenance.
``benchmarks/bench_gains.py`` measures all of this against a bare HuggingFace forward and the
seed's one-prompt-at-a-time loop.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import einops
import numpy as np
import torch
from jaxtyping import Float

from funnel_tl import __version__
from funnel_tl.components import COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.measure.engine import Engine
from funnel_tl.measure.medians import HistogramAccumulator
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.measure.positions import PositionAccumulator
from funnel_tl.measure.reads import ReadSums
from funnel_tl.measure.streaming import PerPrompt, TokenStream
from funnel_tl.models.architectures import HookPlan, is_parallel, layer_norm_output, plan_hooks  # noqa: F401  (re-exported)
from funnel_tl.models.huggingface import measurable
from funnel_tl.models.identity import installed_version, model_name, source_provenance, tokenizer_of
from funnel_tl.prompts.sets import load_prompts
from funnel_tl.prompts.tokens import check_tokens_left, pad_token_id, tokenize, truncation_limit
from funnel_tl.results.gains import GainResult

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

# Residual identities hold to float rounding; a wrong hook alias is off by O(1).
# float32: 1e-4 relative leaves room for summation order; half: one rounding of a ~1e3 sum.
IDENTITY_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def activation_norms(activation: Float[torch.Tensor, "... d_model"]) -> Float[torch.Tensor, ...]:
    """‖·‖ over d_model, computed in float32 whatever the model's dtype (see the module docstring).

    One fused reduction that upcasts as it reads: no float32 copy of the activation and no
    separate square/sum/sqrt kernels. Measured against ``einops.reduce(x.float().square(), ...)``:
    the same error against a float64 reference (~1e-7), 2x faster on the CPU, and fewer kernel
    launches per hook on a GPU, where launches dominate at research batch sizes.
    """
    return torch.linalg.vector_norm(activation, dim=-1, dtype=torch.float32)


def token_norms(
    cache, suffix: str, n_layers: int, layers: Sequence[int] | None = None, read=None
) -> Float[torch.Tensor, "layer batch pos"]:
    """‖·‖ over d_model of one hook at every layer (or at ``layers`` only, in that order) of a cache, in float32.

    ``read(layer, suffix, activation)`` maps each activation to the tensor whose norm is taken
    (``functools.partial(plan.read, model)``: a HookedTransformer's norm affine); default as is.
    """
    chosen = range(n_layers) if layers is None else layers
    read = read if read is not None else (lambda layer, suffix, activation: activation)
    stacked = torch.stack(
        [read(layer, suffix, cache[f"blocks.{layer}.{suffix}"]) for layer in chosen]
    )  # [layer, batch, pos, d_model]
    return activation_norms(stacked)  # [layer, batch, pos]


def check_residual_identities(
    model, cache, mask: torch.Tensor, parallel: bool, dtype: torch.dtype, layers: Sequence[int] | None = None
) -> None:
    """Fail loudly if x + a + m ≠ resid_post (or x + a ≠ resid_mid): a wrong hook alias.

    TransformerLens hook aliases have been wrong for some architectures before (BLOOM, OLMo 2/3,
    Granite); every gain would then be silently wrong. ``cache`` maps hook names to activations
    (a ``run_with_cache`` cache, or one layer's hooks); ``layers`` defaults to every layer.
    """
    tolerance = IDENTITY_TOLERANCE.get(dtype, 1e-2)
    real = mask.bool()
    for layer in range(model.cfg.n_layers) if layers is None else layers:
        block = lambda name: cache[f"blocks.{layer}.{name}"].float()  # noqa: E731, B023  called in this iteration only; [batch, pos, d_model]
        x, a, m = block("hook_resid_pre"), block("hook_attn_out"), block("hook_mlp_out")
        checks = [("resid_pre + attn_out + mlp_out", x + a + m, block("hook_resid_post"))]
        if not parallel:
            checks.append(("resid_pre + attn_out", x + a, block("hook_resid_mid")))
        for label, summed, expected in checks:
            error = torch.linalg.vector_norm(summed - expected, dim=-1)[real]  # [real tokens]
            scale = torch.linalg.vector_norm(expected, dim=-1)[real] + 1e-6
            worst = float((error / scale).max())
            if not worst <= tolerance:
                target = "resid_post" if "mlp" in label else "resid_mid"
                raise FunnelError(
                    f"{model_name(model)} layer {layer}: {label} differs from {target} by {worst:.2g} "
                    f"(relative; allowed {tolerance:g}): TransformerLens hooks for this architecture are "
                    "inconsistent, so its gains cannot be trusted; please report it"
                )


# The order activations are computed in a block: the first non-finite one is the culprit.
FORWARD_ORDER = (
    "hook_resid_pre",
    "ln1.hook_out",
    "ln1.hook_normalized",
    "ln1_post.hook_in",
    "ln1_post.hook_scale",
    "ln1_post.hook_normalized",
    "ln1.hook_in",
    "ln1.hook_scale",
    "hook_attn_out",
    "hook_resid_mid",
    "ln2.hook_out",
    "ln2.hook_normalized",
    "ln2_post.hook_in",
    "ln2_post.hook_scale",
    "ln2_post.hook_normalized",
    "ln2.hook_in",
    "ln2.hook_scale",
    "hook_mlp_out",
    "hook_resid_post",
)
# The key of a hook's sums over positions >= 1 beside its sums over every counted position.
FROM_1 = "@from_1"


def check_finite(
    model, norms: dict[str, torch.Tensor], counted: torch.Tensor, indices, dtype, layers: Sequence[int] | None = None
) -> None:
    """Fail on the first NaN or inf norm (layer, then forward order), naming where it arose.

    The seed averaged with ``nanmean``, which silently hid such layers; an overflow is an error.
    ``layers``: the true index of each of the norms' layer rows (default 0, 1, ...).
    """
    first = None
    for suffix, values in norms.items():  # values: [layer, batch, pos]
        bad = ~torch.isfinite(values) & counted[None]
        if bad.any():
            layer, row, position = (int(i) for i in bad.nonzero()[0])
            layer = layer if layers is None else int(layers[layer])
            rank = FORWARD_ORDER.index(suffix) if suffix in FORWARD_ORDER else len(FORWARD_ORDER)
            if first is None or (layer, rank) < first[:2]:
                first = (layer, rank, suffix, row, position)
    if first is not None:
        layer, _, suffix, row, position = first
        raise FunnelError(
            f"non-finite activation in {model_name(model)}, layer {layer}, {suffix}, prompt {indices[row]}, "
            f"position {position}: "
            + (
                "the model overflows in " + str(dtype).removeprefix("torch.") + "; try --dtype bfloat16 or float32"
                if dtype in (torch.float16, torch.bfloat16)
                else "in float32 this is no overflow: the checkpoint's weights hold NaN or inf; check or re-save it"
            )
        )


def prepare_tokens(
    model, prompts: str | Sequence[str], options: MeasureOptions, tokenizer=None, truncation: dict | None = None
) -> tuple[list[str], list[list[int]], int]:
    """``(prompts, token ids, pad id)`` of a whole prompt set, with every check of ``measure_gains`` on its tokens.

    For measurements that need every prompt's tokens at once (torchrun's shares, the effects'
    batches): prompts loaded, tokenized with the model's own tokenizer, checked against the
    context and ``options.drop_first``, truncated to ``options.max_tokens_per_prompt``;
    ``truncation`` (a dict) then receives the record for the provenance.
    """
    prompt_list = load_prompts(prompts)
    tokenizer = tokenizer if tokenizer is not None else tokenizer_of(model)
    n_ctx = getattr(model.cfg, "n_ctx", None)
    token_ids = tokenize(
        tokenizer,
        prompt_list,
        n_ctx=n_ctx,
        model_name=model_name(model),
        max_tokens=truncation_limit(options.max_tokens_per_prompt, n_ctx),
        truncation=truncation,
        d_vocab=getattr(model.cfg, "d_vocab", None),
    )
    check_tokens_left(token_ids, options.drop_first)
    return prompt_list, token_ids, pad_token_id(tokenizer)


def measure_gains(
    model: TransformerBridge | HookedTransformer | PreTrainedModel,
    prompts: str | Sequence[str] = "seed",
    definition: str = "seed",
    batch_size: int | str = "auto",
    drop_first: int = 0,
    tokenizer: PreTrainedTokenizerBase | None = None,
    progress: bool | None = None,
    intervals: bool = False,
    by_position: bool = False,
    executor: str = "auto",
    max_tokens_per_prompt: int | str | None = None,
    chunk_size: int | None = None,
    keep_texts: bool = True,
    layers: int | Sequence[int] | None = None,
    label: str | None = None,
    options: MeasureOptions | None = None,
) -> GainResult:
    """Measure every layer's (or some layers') attention, MLP and block gain on a prompt set.

    A layer's gain is mean‖out‖ / (mean‖in‖ + 1e-10): norms over d_model of every counted token,
    averaged per prompt, then over prompts (DESIGN.md §2). Batch size, padding, chunking and the
    executor change no number beyond float32 rounding. Every result also holds, from the same
    forward, the readings beside the seed's numbers (``funnel_tl.analysis.readings``):
    ``result.gains_without_first(c)`` (positions >= 1, equal to a ``drop_first=1`` run's gains),
    ``result.block_cumulative_gains`` (the stream's growth), ``result.median_gains(c)``,
    ``result.other_definition`` and, for sandwich and post-norm blocks,
    ``result.module_gains(c)``/``result.post_norm_gains(c)``.

    Args:
        model: a bridge from ``load_model``, a bridge the user booted, a TL 3.x
            ``HookedTransformer`` loaded without weight processing, or a transformers causal LM
            (bridged here). Processed weights and non-decoder models are refused
            (``architectures.plan_hooks`` says what is read on each block shape).
        prompts: ``"seed"``, a prompt file path (``.txt``/``.jsonl``), or a list (or any
            iterable) of strings; a corpus of any length is read a chunk at a time.
        definition: ``"seed"`` (‖out‖ over the LayerNorm output the sublayer reads) or
            ``"residual"`` (‖out‖ over the residual stream it reads).
        batch_size: prompts per forward, or ``"auto"`` (a token budget from the free GPU memory,
            ``engine.auto_batch_size``; ``engine.CPU_BATCH_SIZE`` on the CPU).
        drop_first: leading positions left out of every prompt (position 0 often has a huge
            norm: attention sinks, massive activations).
        tokenizer: the tokenizer to use; default the model's own.
        progress: a progress bar; None shows one on a terminal.
        intervals: return the result with 95% intervals over prompts (t intervals, the products'
            by a studentized bootstrap of 2,000 resamples, seed 0: ``result.with_intervals()``);
            needs at least two prompts.
        by_position: also keep the sums by position bucket (``funnel_tl.results.positions``):
            ``result.position_gains("attn")`` is then ``[layer, bucket]``. Needs every layer.
        executor: ``"auto"`` (the HF modules behind the TL hooks where they agree with the TL
            hooks on the first batch), ``"transformer_lens"`` or ``"hf"``
            (``funnel_tl.measure.engine``); the one that ran is ``provenance["executor"]``.
        max_tokens_per_prompt: keep only the first tokens of longer prompts (a number, or
            ``"context"`` for the model's context), recorded in ``provenance["truncation"]``;
            None: a prompt longer than the context is an error.
        chunk_size: prompts read, tokenized and measured at a time (default
            ``streaming.CHUNK_PROMPTS``, 4,096; changes no number beyond float32 rounding).
        keep_texts: keep the prompt texts in the result; False keeps only their count and sha256
            (per-prompt statistics are kept either way).
        layers: a layer, a list of layers (negative counts from the end) or None for all. Only
            those layers' hooks are read and the pass stops after the last one, so
            ``layers=[0, 1]`` of a deep model costs about two layers; each layer's gains equal a
            full measurement's. The result holds those layers (``result.layers``, true indices)
            and what they determine: the cumulative gain over a measured prefix only, and no
            Funnel verdict (``funnel_test`` refuses it, results.json says ``"not_testable"``).
        label: the name the result carries (results.json, titles, the CLI's default folder) in
            place of ``model_name(model)``, which the provenance keeps (``model_loaded_as``).
        options: all of the options above from ``definition`` on (but ``tokenizer``,
            ``progress`` and ``intervals``) as one ``MeasureOptions``, e.g. to give
            ``head_gains`` the same; the keywords then stay at their defaults.

    Returns:
        A ``GainResult``: per-prompt norm sums ``[prompt, layer]`` for each component, the gains
        ``[layer]`` derived from them (``result.attn_gains``, ``mlp_gains``, ``block_gains``) and
        the provenance (versions, device, dtype, executor, batching, prompts' sha256).

    >>> from funnel_tl import load_model, measure_gains
    >>> result = measure_gains(load_model(device="cpu"), "seed")  # doctest: +SKIP
    >>> result.attn_gains.shape  # doctest: +SKIP
    (8,)
    >>> early = measure_gains(load_model(device="cpu"), "seed", layers=[0, 1, -1])  # doctest: +SKIP
    >>> early.layers, early.attn_gains.shape  # doctest: +SKIP
    ((0, 1, 7), (3,))
    """
    options = MeasureOptions.given(
        options,
        definition=definition,
        batch_size=batch_size,
        drop_first=drop_first,
        by_position=by_position,
        executor=executor,
        max_tokens_per_prompt=max_tokens_per_prompt,
        chunk_size=chunk_size,
        keep_texts=keep_texts,
        layers=layers,
        label=label,
    )  # every option checked once, before the model is looked at
    model = measurable(model, tokenizer, "measure_gains")  # a name or None refused; a transformers model bridged
    n_layers = model.cfg.n_layers
    chosen = options.chosen_layers(n_layers)
    plan = plan_hooks(model, options.definition)
    name = options.label or model_name(model)
    # by_position (funnel_tl.results.positions): buckets grow with the longest prompt read so far, ending
    # where the whole corpus at once would put them.
    positions = PositionAccumulator(0, n_layers, 1) if options.by_position else None
    reduction = GainSums(model, plan, positions, chosen)
    engine = Engine(model, reduction, options.executor)
    stream = TokenStream(
        model, prompts, options, tokenizer, engine.device, on_chunk=positions.grow if positions is not None else None
    )

    # Every hook's norm, summed over all counted tokens and over those from position 1 (funnel_tl.measure.reads).
    suffixes = plan.norm_suffixes
    shapes = {f"{suffix}{part}": (len(chosen),) for suffix in suffixes for part in ("", FROM_1)}
    sums, counts = PerPrompt(shapes), PerPrompt({"n_tokens": ()}, dtype=np.int64)
    batches = engine.run(
        stream.batches(), options.drop_first, progress, description=f"gains {name}", total=stream.known_total
    )
    for batch, batch_sums, counted in batches:
        sums.put(batch.indices, batch_sums)
        counts.put(batch.indices, {"n_tokens": counted})

    n_prompts = stream.n_prompts
    kept = sums.result(n_prompts)
    n_tokens = counts.result(n_prompts)["n_tokens"]
    provenance = run_provenance(model, engine, stream, options) | {"reads": plan.describe(), **stream.truncation}
    reads = ReadSums(
        reads=plan.describe_roles(),
        sums={role: kept[suffix] for role, suffix in plan.roles.items()},
        sums_from_1={role: kept[suffix + FROM_1] for role, suffix in plan.roles.items()},
        # right-padded batches: position 0 is every prompt's first token, counted unless dropped
        n_tokens_from_1=n_tokens - (1 if options.drop_first == 0 else 0),
    )
    result = GainResult(
        model=name,
        definition=options.definition,
        n_layers=n_layers,
        d_model=model.cfg.d_model,
        parallel_blocks=plan.parallel_blocks,
        prompts=None if stream.texts is None else tuple(stream.texts),
        n_tokens=n_tokens,
        out_sums={c: kept[plan.outputs[c]] for c in COMPONENTS},
        in_sums={c: kept[plan.inputs[c]] for c in COMPONENTS},
        drop_first=options.drop_first,
        provenance=provenance,
        positions=positions.result() if positions is not None else None,
        layers=None if len(chosen) == n_layers else chosen,
        reads=reads,
        token_histograms=reduction.histograms.result(COMPONENTS),
    )
    return result.with_intervals() if intervals else result


IDENTITY_SUFFIXES = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_mid", "hook_resid_post")


def _forward_rank(suffix: str) -> int:
    return FORWARD_ORDER.index(suffix) if suffix in FORWARD_ORDER else len(FORWARD_ORDER)


class GainSums:
    """The gains' reduction (``engine.Reduction``): each planned hook's per-token norm, summed per prompt.

    Each read becomes its float32 norm ``[batch, pos]`` as it fires; ``finish`` stacks one hook's
    layers into ``[layer, batch, pos]`` and sums each prompt's counted tokens (``engine.prompt_sums``)
    into ``[batch, layer]``, and again those at position 1 or later (key ``suffix + FROM_1``).
    Every hook of ``plan.norm_suffixes`` is read (``funnel_tl.measure.reads``: both definitions' inputs,
    module outputs before a post-norm), not only the definition's. Committed passes also count
    each component's per-token gains into ``histograms`` (``funnel_tl.measure.medians``). On a run's first
    batch the residual identities are checked too, one layer's activations held at a time.
    ``layers``: the layers read (default all), ascending; the ``layer`` axis runs over them.
    """

    def __init__(self, model, plan: HookPlan, positions=None, layers: Sequence[int] | None = None):
        self.model, self.plan, self.positions = model, plan, positions  # positions: a PositionAccumulator or None
        self.layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(layers)
        self.row = {layer: row for row, layer in enumerate(self.layers)}
        self.dtype = next(model.parameters()).dtype
        self.identity_suffixes = set(IDENTITY_SUFFIXES) - ({"hook_resid_mid"} if plan.parallel_blocks else set())
        self.scale_suffixes = set(plan.scaled.values())
        self.histograms = HistogramAccumulator(len(COMPONENTS), len(self.layers), next(model.parameters()).device)

    def reads(self, first: bool) -> list[tuple[int, str]]:
        suffixes = set(self.plan.read_suffixes) | (self.identity_suffixes if first else set())
        return [(layer, suffix) for layer in self.layers for suffix in sorted(suffixes, key=_forward_rank)]

    def start(self, batch, tokens, attention_mask, counted, first: bool) -> None:
        self.batch, self.attention_mask, self.counted, self.first = batch, attention_mask, counted, first
        self.norms: dict[str, list] = {suffix: [None] * len(self.layers) for suffix in self.plan.norm_suffixes}
        self.held: dict[str, torch.Tensor] = {}  # one layer's activations for the identity check, first batch only
        self.scales: dict[str, torch.Tensor] = {}  # hook_scale of the current layer (HookedTransformer's RMSNorm)

    def read(self, layer: int, suffix: str, activation: torch.Tensor) -> None:
        if suffix in self.scale_suffixes:
            self.scales[suffix] = activation  # [batch, pos, 1]
        if suffix in self.norms:
            scale = self.scales.pop(self.plan.scaled[suffix], None) if suffix in self.plan.scaled else None
            read = self.plan.read(self.model, layer, suffix, activation, scale)
            self.norms[suffix][self.row[layer]] = activation_norms(read)  # [batch, pos]
        if self.first and suffix in self.identity_suffixes:
            self.held[f"blocks.{layer}.{suffix}"] = activation
            if suffix == "hook_resid_post":
                try:
                    check_residual_identities(
                        self.model,
                        self.held,
                        self.attention_mask,
                        self.plan.parallel_blocks,
                        self.dtype,
                        layers=[layer],
                    )
                except FunnelError:
                    # A non-finite layer fails the identity check by NaN; the batch's finiteness check
                    # names it better. Looked at only on failure: no extra sync per layer otherwise.
                    real = self.attention_mask.bool()
                    if all(bool(torch.isfinite(held[real]).all()) for held in self.held.values()):
                        raise
                self.held.clear()

    def finish(self) -> dict[str, torch.Tensor]:
        # Stacked once per batch, every hook's layers together ([hook, layer, batch, pos]); commit and
        # raise_nonfinite, which the engine calls after finish, reuse it.
        suffixes = list(self.norms)
        self.all_norms = torch.stack([norm for suffix in suffixes for norm in self.norms[suffix]]).unflatten(
            0, (len(suffixes), len(self.layers))
        )  # [hook, layer, batch, pos]
        self.stacked = dict(zip(suffixes, self.all_norms, strict=True))  # each [layer, batch, pos]
        # Every hook's sums over the counted tokens and over those from position 1, in one reduction:
        # uncounted tokens are zeroed by selection first (a non-finite norm at a padded position must
        # not poison a sum), then each prompt's tokens are summed under the two masks.
        from_1 = self.counted.clone()
        from_1[:, :1] = False  # right-padded: position 0 is each prompt's first token
        kept = torch.where(
            self.counted, self.all_norms, torch.zeros((), dtype=self.all_norms.dtype, device=self.all_norms.device)
        )
        masks = torch.stack([self.counted, from_1]).to(kept.dtype)[:, None, None]  # [part, 1, 1, batch, pos]
        # A product and a sum over each row of positions, not a matmul: every sum is added in the
        # same order whatever the batch's or the subset's shape, so a layer subset, a drop_first=1
        # run and the sums from position 1 agree bit for bit.
        sums = einops.rearrange((kept * masks).sum(dim=-1), "part hook layer batch -> part hook batch layer")
        return {suffix: sums[0, index] for index, suffix in enumerate(suffixes)} | {
            suffix + FROM_1: sums[1, index] for index, suffix in enumerate(suffixes)
        }  # each [batch, layer]

    def commit(self) -> None:
        # ---- by_position (funnel_tl.results.positions, issue 15): the same norms, summed by position bucket ----
        if self.positions is not None:
            self.positions.add(
                self.batch.indices,
                {suffix: self.stacked[suffix] for suffix in self.plan.suffixes},
                self.counted,
                self.plan,
            )
        # ---- median per-token gains (funnel_tl.measure.medians): the same norms, as per-token ratios ----
        index = {suffix: row for row, suffix in enumerate(self.stacked)}
        outputs = [index[self.plan.outputs[component]] for component in COMPONENTS]
        inputs = [index[self.plan.inputs[component]] for component in COMPONENTS]
        self.histograms.add(
            self.all_norms[outputs], self.all_norms[inputs], self.counted
        )  # [component, layer, batch, pos]

    def raise_nonfinite(self) -> None:
        check_finite(self.model, self.stacked, self.counted, self.batch.indices, self.dtype, self.layers)


def run_provenance(model, engine: Engine, stream: TokenStream, options: MeasureOptions) -> dict:
    """What a measurement ran on and with: versions, device, the prompts' fingerprint, batching.

    ``engine`` and ``stream``: the measurement's, after the run (``stream`` read to the end);
    ``options``: as the measurement was asked (``batch_size_requested``, ``drop_first``, and
    ``model_loaded_as`` where a ``label`` renames the model).
    """
    # Imported on use: TransformerLens takes seconds to import (not needed by `--help`).
    import transformer_lens
    import transformers

    device, dtype = engine.device, engine.dtype
    return {
        "funnel_tl": __version__,
        "transformer_lens": getattr(transformer_lens, "__version__", None) or installed_version("transformer-lens"),
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "prompts_sha256": stream.sha256,
        "n_tokens_total": int(stream.n_tokens_total),
        "batch_size": int(stream.batch_size),
        "padding_fraction": float(stream.padding_fraction),
        "drop_first": options.drop_first,
        "batch_size_requested": str(options.batch_size),
        "executor": engine.executor_name,
        "executor_fallback": engine.fallback,
        **({} if stream.n_prompts <= stream.chunk_size else {"chunk_size": int(stream.chunk_size)}),
        **source_provenance(model),  # the full path of a model named by its folder
        # What the seed definition divides by: RMS, LN (TransformerLens' normalization_type).
        "normalization": getattr(model.cfg, "normalization_type", None),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"model_loaded_as": model_name(model)} if options.label else {}),
    }
