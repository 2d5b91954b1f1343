"""``GainResult``: the per-layer statistics of one model on one prompt set, and results.json.

Glossary (DESIGN.md §2; hook names as in TransformerLens). For layer ``l`` and token ``t``:

- ``x`` = ``blocks.{l}.hook_resid_pre``, ``a`` = ``blocks.{l}.hook_attn_out``,
  ``m`` = ``blocks.{l}.hook_mlp_out``; ``resid_post`` = x + a + m.
- ``u_attn``, ``u_mlp`` = what the attention and MLP modules actually receive: the LayerNorm
  outputs *with* their affine weights (``ln1.hook_out``, ``ln2.hook_out``).
- ``resid_mid`` = x + a for serial blocks; parallel blocks (Pythia, GPT-J) have none.
- Sandwich norms (Gemma 2/3): a and m after their post-norm; post-norm blocks (OLMo 2): u = the
  stream itself. ``architectures.py`` holds every block shape; ``provenance["reads"]`` records
  the shape and the hook each number came from.

What "input" and "output" mean for each component:

============  =====================  =========================================  ============
component     output                 input, ``definition="seed"``               input, ``"residual"``
============  =====================  =========================================  ============
``attn``      ‖a‖                    ‖u_attn‖                                   ‖x‖
``mlp``       ‖m‖                    ‖u_mlp‖                                    ‖resid_mid‖ (serial) or ‖x‖ (parallel)
``block``     ‖resid_post‖           ‖x‖                                        ‖x‖
============  =====================  =========================================  ============

Aggregation (the seed's): for each prompt, the mean over its tokens of each norm, and
gain = mean‖out‖ / (mean‖in‖ + 1e-10); a layer's gain is the mean of the per-prompt gains.
The per-prompt sums Σ‖out‖, Σ‖in‖ and token counts are kept, so pooled or bootstrap statistics
derive from them. ``combined`` = attn gain × MLP gain of the layer; ``cumulative`` = running
product of ``combined`` over layers.

Beside the seed's numbers, from the same forward (``funnel_tl.measure.reads``, ``funnel_tl.measure.medians``;
results built without them, e.g. by ``gains_from_cache`` or from older files, lack these keys):

- ``gains_without_first``: the gains over positions >= 1, equal to a ``drop_first=1`` run's
  (``without_first(1)``); position 0 carries the attention sink's massive activations;
- ``block_cumulative_gains`` (results.json ``block.cumulative_gains``): the stream's real growth,
  per prompt mean_t‖resid_post_L‖ / mean_t‖resid_pre_0‖, averaged over prompts. The seed's
  ``cumulative_gains`` (``combined.cumulative_gains``) is a running product of sublayer gains with
  a denominator each: no norm ratio of any activation;
- ``module_gains`` / ``post_norm_gains`` (sandwich and post-norm blocks): ‖module output before its
  post-norm‖ / ‖what the module reads‖, and ‖a‖ (or ‖m‖) / ‖module output‖; per prompt their
  product is the seed gain;
- ``in_definition(other)``: the same forward's gains under the other definition;
- ``median_gains``: the median over every counted token of the per-token gain, from histograms
  (``funnel_tl.measure.medians``: within 0.12% of the exact median).

results.json keys they add: ``attention``/``mlp``/``combined``/``block`` ``["gains_without_first"]``;
``attention``/``mlp``/``block`` ``["median_gains"]``; ``attention``/``mlp`` ``["module_gains"]`` and
``["post_norm_gains"]`` (post-normed blocks); ``block["cumulative_gains"]`` and
``["cumulative_gains_without_first"]`` (with ``["cumulative_intervals"]`` and
``["cumulative_intervals_without_first"]`` when intervals were drawn); ``without_first`` (the
headline numbers and the verdict over positions >= 1); ``other_definition`` (its gains and verdict,
with and without position 0, and the mean input norms of both definitions per layer);
``token_histograms`` (the medians' method and counts); ``per_prompt["reads"]`` (every role's
per-prompt sums, over all positions and from position 1).

Measured on some layers only (``measure_gains(..., layers=...)``), a result holds those layers
(``result.layers``, true indices; every per-layer array has that length) and ``n_layers`` stays the
model's depth. Per-layer gains are exact there. The running product from layer 0 is exact only
over a measured prefix 0..k (``cumulative_layers``); the Funnel verdicts need every layer from 0,
and are refused (``funnel.not_testable``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from funnel_tl.analysis.sink import sink_effect
from funnel_tl.components import DEFINITIONS, gain_ratio
from funnel_tl.errors import FunnelError
from funnel_tl.measure.layers import check_measured, format_layer_spans
from funnel_tl.results.files import (
    prompts_subset,
    read_json,
    subset_index,
    write_json_atomic,
)
from funnel_tl.results.gains_checks import check_parts, check_sums
from funnel_tl.results.gains_derived import drop_first_positions, mean_ratio, stream_stack, under_definition
from funnel_tl.results.gains_display import result_html, result_repr
from funnel_tl.results.gains_file import gain_frame, result_dict, result_from_dict

if TYPE_CHECKING:  # jaxtyping's shapes for type checkers and the API reference; importing it costs ~0.1 s
    from jaxtyping import Float, Int

    from funnel_tl.analysis.intervals import Intervals


@dataclass(frozen=True)
class GainResult:
    """Per-prompt norm sums of each component of each layer; every gain derives from them.

    Shapes: ``out_sums[c]`` and ``in_sums[c]`` are ``[prompt, layer]`` sums over the counted
    tokens of ‖output‖ and ‖input‖ of component ``c`` (see the module docstring for what input
    means under each definition); ``n_tokens`` is ``[prompt]``, the tokens counted. ``layer`` runs
    over ``layers``, the measured layers (ascending true indices; None given = all ``n_layers``).
    """

    model: str
    definition: str
    n_layers: int
    d_model: int
    parallel_blocks: bool
    prompts: tuple[str, ...] | None  # None: texts not kept (keep_texts=False); their sha256 is in the provenance
    n_tokens: Int[np.ndarray, " prompt"]
    out_sums: dict[str, Float[np.ndarray, "prompt layer"]]
    in_sums: dict[str, Float[np.ndarray, "prompt layer"]]
    drop_first: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    # Bootstrap intervals over prompts (funnel_tl.analysis.stats.Intervals), or None until
    # ``with_intervals`` draws them; ``subset`` drops them, as they describe all the prompts.
    intervals: Any = None
    # Per-prompt sums by position bucket (funnel_tl.results.positions.PositionSums) when measured with
    # ``by_position=True``; None otherwise (and in files written before it existed).
    positions: Any = None
    # The measured layers, ascending (``measure_gains(..., layers=...)``); None: every layer.
    layers: tuple[int, ...] | None = None
    # Every norm the forward read, by role, over all counted positions and from position 1
    # (funnel_tl.measure.reads.ReadSums); None where not measured so (gains_from_cache, older files).
    reads: Any = None
    # Histograms of per-token log10 gains by component and layer (funnel_tl.measure.medians.TokenHistograms), or None.
    token_histograms: Any = None

    def __post_init__(self):
        if self.definition not in DEFINITIONS:
            raise FunnelError(f"unknown definition {self.definition!r}: choose seed or residual")
        layers = tuple(range(self.n_layers)) if self.layers is None else check_measured(self.layers, self.n_layers)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "n_tokens", np.asarray(self.n_tokens, dtype=np.int64))
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(self.prompts))
        check_sums(self)  # a count for every prompt; [prompt, layer] sums, stored as float64
        check_parts(self)  # intervals, position sums, read sums, histograms: the same prompts, layers, tokens

    # ---- display -----------------------------------------------------------------------------
    def __repr__(self) -> str:  # the prompts and per-prompt arrays would flood a notebook cell
        return result_repr(self)

    def _repr_html_(self) -> str:
        """A small table in notebooks: one row per layer, gains and (when drawn) intervals."""
        return result_html(self)

    def to_pandas(self):
        """The gains as a tidy table, one row per layer and component (pandas, imported here).

        Columns: model, layer, component (attn, mlp, block, combined, cumulative), gain, ci_low,
        ci_high (the bootstrap interval, NaN without intervals), n_prompts. ``layer`` is the true
        layer index; measured on some layers only, only those have rows (cumulative ones only
        over ``cumulative_layers``). Measured with
        ``by_position=True``, a ``position`` column too: ``"all"`` on these rows, and one more row
        per layer, component (attn, mlp, block, combined) and reached position bucket, with its
        label ("0", "16-31"), ``position_start``/``position_stop`` and the prompts reaching it
        (``positions.position_rows``). Those two are integers of pandas' nullable ``Int64``
        dtype, ``<NA>`` on the ``"all"`` rows (not floats with NaN).

        >>> result.to_pandas().query("component == 'mlp'").plot(x="layer", y="gain")  # doctest: +SKIP
        >>> table = result.to_pandas()  # measured with by_position=True  # doctest: +SKIP
        >>> table.query("position != 'all'")[["position", "position_start", "position_stop"]].head(2)  # doctest: +SKIP
          position  position_start  position_stop
        15       0               0              0
        16       1               1              1
        >>> table["position_start"].dtype, table.loc[0, "position_start"]  # doctest: +SKIP
        (Int64Dtype(), <NA>)
        """
        return gain_frame(self)

    # ---- gains -------------------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return len(self.n_tokens)

    @property
    def _layers(self) -> tuple[int, ...]:
        """``layers`` as ``__post_init__`` leaves it: the measured layers, never None."""
        assert self.layers is not None
        return self.layers

    @property
    def all_layers(self) -> bool:
        """Whether every layer of the model was measured (the Funnel verdicts need it)."""
        return len(self._layers) == self.n_layers

    @property
    def layer_spans(self) -> str:
        """The measured layers in ``--layers`` syntax, e.g. ``"0-3,23"``."""
        return format_layer_spans(self._layers)

    @property
    def cumulative_layers(self) -> tuple[int, ...]:
        """The layers the cumulative gain covers: the measured prefix 0..k (every layer for a full
        result; none when layer 0 was not measured). Past a gap a running product from layer 0
        would silently skip the missing layers' gains, so it stops there."""
        prefix = 0
        while prefix < len(self._layers) and self._layers[prefix] == prefix:
            prefix += 1
        return self._layers[:prefix]

    def per_prompt_gains(self, component: str) -> Float[np.ndarray, "prompt layer"]:
        """``[prompt, layer]``: mean‖out‖ / (mean‖in‖ + 1e-10) of each prompt (the seed's).

        Args:
            component: ``"attn"``, ``"mlp"`` or ``"block"``; ``out`` and ``in`` are its output and
                input norms under ``definition`` (the module docstring's table), each averaged over
                the prompt's counted tokens.

        Returns:
            ``[prompt, layer]`` gains, ``layer`` running over ``layers``.
        """
        counts = self.n_tokens[:, None]
        return gain_ratio(self.out_sums[component] / counts, self.in_sums[component] / counts)

    def gains(self, component: str) -> Float[np.ndarray, " layer"]:
        """``[layer]``: the mean over prompts of the per-prompt gains.

        Args:
            component: ``"attn"``, ``"mlp"`` or ``"block"`` (``attn_gains`` is ``gains("attn")``);
                the products are ``combined_gains`` and ``cumulative_gains``.

        Returns:
            ``[layer]`` gains over ``layers``; a gain below 1 contracts what the sublayer reads.
        """
        return self.per_prompt_gains(component).mean(axis=0)

    @property
    def attn_gains(self) -> Float[np.ndarray, " layer"]:
        return self.gains("attn")

    @property
    def mlp_gains(self) -> Float[np.ndarray, " layer"]:
        return self.gains("mlp")

    @property
    def block_gains(self) -> Float[np.ndarray, " layer"]:
        return self.gains("block")

    @property
    def combined_gains(self) -> Float[np.ndarray, " layer"]:
        """Attn gain × MLP gain of each layer (products of the aggregated gains, as the seed)."""
        return self.attn_gains * self.mlp_gains

    @property
    def cumulative_gains(self) -> Float[np.ndarray, " layer"]:
        """``[layer]`` over ``cumulative_layers``: the running product of ``combined`` from layer 0."""
        return np.cumprod(self.combined_gains[: len(self.cumulative_layers)])

    def subset(self, prompt_indices: Sequence[int] | Int[np.ndarray, " index"]) -> GainResult:
        """A new result over some of the prompts (for bootstrap resampling and checks).

        Args:
            prompt_indices: ``[index]`` positions in this result's prompts, at least one (a list or
                an integer array; repeats allowed, negative ones count from the end, as in numpy).

        Returns:
            The result over those prompts, in that order, every ``[prompt, ...]`` sum indexed
            alike; without intervals, which describe all the prompts.
        """
        index = subset_index(prompt_indices, self.n_prompts)
        prompts, provenance = prompts_subset(self.prompts, self.provenance, index)
        return GainResult(
            model=self.model,
            definition=self.definition,
            n_layers=self.n_layers,
            d_model=self.d_model,
            parallel_blocks=self.parallel_blocks,
            prompts=prompts,
            n_tokens=self.n_tokens[index],
            out_sums={c: v[index] for c, v in self.out_sums.items()},
            in_sums={c: v[index] for c, v in self.in_sums.items()},
            drop_first=self.drop_first,
            provenance=provenance,
            positions=None if self.positions is None else self.positions.subset(index),
            layers=self.layers,
            reads=None if self.reads is None else self.reads.subset(index),
        )

    def position_gains(self, component: str) -> Float[np.ndarray, "layer bucket"]:
        """``[layer, bucket]`` gains by position (``funnel_tl.results.positions``); needs ``by_position=True``.

        A cell is the mean, over the prompts that reach the bucket, of the ratio of their mean norms
        there (the seed's aggregation); NaN where no prompt reaches it. Buckets are
        ``self.positions.labels``; prompts behind each, ``self.positions.prompt_counts()``.

        Args:
            component: ``"attn"``, ``"mlp"``, ``"block"`` or ``"combined"`` (each cell's attn gain
                × its MLP gain).

        Returns:
            ``[layer, bucket]`` gains, ``layer`` over ``layers``, ``bucket`` over the position buckets.
        """
        if self.positions is None:
            raise FunnelError(
                f"{self.model}: no position-resolved sums: measure with by_position=True (funnel-tl run --by-position)"
            )
        return self.positions.gains(component)

    def without_first(self, k: int) -> GainResult:
        """The result as if measured with ``drop_first=k``, from the position sums (no model needed).

        ``k=1`` needs no position sums in a result with read sums (every ``measure_gains`` run):
        its sums from position 1 are exactly those a ``drop_first=1`` run adds up. Prompts with no
        token left after the first k positions are left out (they would count none). Intervals are
        not carried over: draw them again with ``with_intervals``.

        Args:
            k: how many first positions of every prompt to leave out: 1 from the read sums, 0 to 16
                (``positions.SINGLE_POSITIONS``) from the position sums; ``k`` at most this result's
                ``drop_first`` gives this result without intervals.

        Returns:
            A result with ``drop_first=k`` over the prompts that keep a token, its provenance
            saying what it derives from (``derived_from_drop_first``).
        """
        return drop_first_positions(self, k)

    # ---- beside the seed's numbers (funnel_tl.measure.reads, funnel_tl.measure.medians) ------------------------
    @cached_property
    def without_first_position(self) -> GainResult | None:
        """This result over positions >= 1 (``without_first(1)``, itself when position 0 is already
        dropped), with intervals drawn as this result's; None without read sums (older files) or
        when no prompt has a second token."""
        if self.drop_first >= 1:
            return self
        if self.reads is None or not np.any(self.reads.n_tokens_from_1 > 0):
            return None
        return self._like_intervals(self.without_first(1))

    def gains_without_first(self, component: str) -> Float[np.ndarray, " layer"] | None:
        """``[layer]`` gains of ``component`` (attn, mlp, block, combined) over positions >= 1, or None.

        Args:
            component: ``"attn"``, ``"mlp"``, ``"block"`` or ``"combined"``.

        Returns:
            ``[layer]`` gains of ``without_first_position``; None without read sums (older files) or
            when no prompt has a second token.
        """
        without = self.without_first_position
        if without is None:
            return None
        return without.combined_gains if component == "combined" else without.gains(component)

    def _like_intervals(self, other: GainResult) -> GainResult:
        """``other`` with intervals drawn as this result's were (same resamples, seed, confidence)."""
        if self.intervals is None or other.n_prompts < 2:
            return other
        # Imported on use: looked up in its own module on each call (where tests replace it).
        from funnel_tl.analysis.stats import bootstrap_intervals

        # The layers' intervals alone (as positions.sink_effect draws them): no page shows the
        # position cells' of a derived result.
        return replace(
            other,
            intervals=bootstrap_intervals(
                other,
                n_resamples=self.intervals.n_resamples,
                seed=self.intervals.seed,
                confidence=self.intervals.confidence,
                method=self.intervals.method,
            ),
        )

    def in_definition(self, definition: str) -> GainResult:
        """The same forward's gains under ``definition`` (``"seed"`` or ``"residual"``), from the read sums.

        >>> measure_gains(model, "seed").in_definition("residual").attn_gains  # doctest: +SKIP

        Args:
            definition: ``"seed"`` (a sublayer's input is the LayerNorm output it reads) or
                ``"residual"`` (the residual stream it reads from); see the module docstring's
                table. This result's own definition gives this result.

        Returns:
            A result of the same prompts and tokens whose sums are the read sums of the other
            definition's roles, without intervals (``other_definition`` draws them).
        """
        return under_definition(self, definition)

    @cached_property
    def other_definition(self) -> GainResult | None:
        """``in_definition`` of the definition this result is not, with intervals drawn as this
        result's; None where its inputs were not read."""
        other = DEFINITIONS[1 - DEFINITIONS.index(self.definition)]
        try:
            return self._like_intervals(self.in_definition(other))
        except FunnelError:
            return None

    def module_gains(self, component: str) -> Float[np.ndarray, " layer"] | None:
        """``[layer]`` (attn or mlp) of a post-normed block: the mean over prompts of
        mean‖module output before its post-norm‖ / (mean‖what the module reads‖ + 1e-10); None
        where no post-norm follows the sublayer (or it was not read).

        Args:
            component: ``"attn"`` or ``"mlp"``.

        Returns:
            ``[layer]`` module gains over ``layers``, or None.
        """
        if self.reads is None or not self.reads.has(f"{component}_module_out", f"{component}_in"):
            return None
        return mean_ratio(self.reads.sums[f"{component}_module_out"], self.reads.sums[f"{component}_in"], self.n_tokens)

    def post_norm_gains(self, component: str) -> Float[np.ndarray, " layer"] | None:
        """``[layer]`` (attn or mlp): the post-norm's own gain, mean‖a‖ (or ‖m‖) / mean‖module output‖
        per prompt, averaged; per prompt, module gain × post-norm gain = the seed gain.

        Args:
            component: ``"attn"`` or ``"mlp"``.

        Returns:
            ``[layer]`` post-norm gains over ``layers``; None where no post-norm follows the
            sublayer (or it was not read).
        """
        if self.reads is None or not self.reads.has(f"{component}_module_out"):
            return None
        return mean_ratio(
            self.reads.sums[f"{component}_out"], self.reads.sums[f"{component}_module_out"], self.n_tokens
        )

    def median_gains(self, component: str) -> Float[np.ndarray, " layer"] | None:
        """``[layer]`` median per-token gain of ``component`` (attn, mlp, block) over every counted
        token (``funnel_tl.measure.medians``), or None where no histograms were kept.

        Args:
            component: ``"attn"``, ``"mlp"`` or ``"block"``.

        Returns:
            ``[layer]`` medians of the per-token gain ‖out_t‖ / ‖in_t‖ over ``layers`` (from
            histograms: within 0.12% of the exact median), or None.
        """
        histograms = self.token_histograms
        if histograms is None or component not in histograms.components:
            return None
        return histograms.median(component)

    def mean_input_norms(self, role: str) -> Float[np.ndarray, " layer"] | None:
        """``[layer]``: the mean over prompts of mean‖role‖ (``funnel_tl.measure.reads.ROLES``), or None if not read.

        Args:
            role: what was read, one of ``funnel_tl.measure.reads.ROLES``: ``"resid_pre"`` (x),
                ``"resid_mid"``, ``"resid_post"``, ``"attn_in"`` / ``"mlp_in"`` (u_attn, u_mlp),
                ``"attn_out"`` / ``"mlp_out"`` (a, m), ``"attn_module_out"`` / ``"mlp_module_out"``.

        Returns:
            ``[layer]`` mean norms over ``layers``, in the model's activation units, or None.
        """
        if self.reads is None or role not in self.reads.sums:
            return None
        return (self.reads.sums[role] / self.n_tokens[:, None]).mean(axis=0)

    @property
    def stream_layers(self) -> tuple[int, ...]:
        """The layers ``block_cumulative_gains`` covers: every measured layer when layer 0 was
        measured (its ``resid_pre`` is the denominator), none otherwise."""
        return self._layers if self._layers[0] == 0 else ()

    @cached_property
    def _stack(self) -> GainResult | None:
        """Blocks 0..L read as one block: ``block`` sums of ‖resid_post_L‖ over ‖resid_pre_0‖ (the
        other components as this result's), so that its block gains and intervals are the stream's growth."""
        return stream_stack(self)

    @property
    def block_cumulative_gains(self) -> Float[np.ndarray, " layer"]:
        """``[layer]`` over ``stream_layers``: how much the residual stream has grown by the end of
        layer L, per prompt mean_t‖resid_post_L‖ / (mean_t‖resid_pre_0‖ + 1e-10), averaged over
        prompts (results.json ``block.cumulative_gains``). Unlike the seed's ``cumulative_gains``, a
        norm ratio of two activations."""
        return np.empty(0) if self._stack is None else self._stack.block_gains

    @cached_property
    def block_cumulative_intervals(self) -> Float[np.ndarray, "layer 2"] | None:
        """``[layer, 2]`` intervals of ``block_cumulative_gains`` (drawn as the result's, on first
        use), or None without intervals."""
        if self._stack is None or self.intervals is None:
            return None
        stack = self._like_intervals(self._stack)
        return None if stack.intervals is None else stack.intervals.block

    def with_intervals(
        self,
        intervals: Intervals | None = None,
        n_resamples: int | None = None,
        seed: int | None = None,
        confidence: float | None = None,
        method: str | None = None,
    ) -> GainResult:
        """A new result carrying intervals over prompts (see ``funnel_tl.analysis.stats``).

        Pass ready ``Intervals``, or let them be drawn from this result's per-prompt sums
        (defaults: t intervals, 95%; ``method="percentile"``: the percentile bootstrap, 2,000
        resamples, seed 0). The same arguments give the same intervals.

        >>> result = result.with_intervals()                           # doctest: +SKIP
        >>> result.intervals.method, result.intervals.mlp[-1]         # doctest: +SKIP
        ('t', array([3.21, 3.98]))

        Args:
            intervals: ready ``Intervals`` of this result's layers (the other arguments are then
                not used), or None to draw them.
            n_resamples: resamples of the prompts (``stats.DEFAULT_RESAMPLES``, 2,000, if None):
                the percentile bootstrap's, or under ``"t"`` the products' studentized bootstrap.
            seed: the resampling's random seed (0 if None).
            confidence: the intervals' coverage, between 0 and 1 (0.95 if None).
            method: ``"t"`` (if None) or ``"percentile"`` (``stats.METHODS``).

        Returns:
            This result carrying the intervals (and, measured ``by_position=True``, its position
            sums carrying theirs, drawn with the same settings).
        """
        # Imported on use: looked up in its own module on each call (where tests replace it).
        from funnel_tl.analysis.stats import (
            DEFAULT_CONFIDENCE,
            DEFAULT_METHOD,
            DEFAULT_RESAMPLES,
            DEFAULT_SEED,
            bootstrap_intervals,
        )

        if intervals is None:
            intervals = bootstrap_intervals(
                self,
                n_resamples=DEFAULT_RESAMPLES if n_resamples is None else n_resamples,
                seed=DEFAULT_SEED if seed is None else seed,
                confidence=DEFAULT_CONFIDENCE if confidence is None else confidence,
                method=DEFAULT_METHOD if method is None else method,
            )
        positions = self.positions
        if positions is not None:
            positions = positions.with_intervals(intervals.n_resamples, intervals.seed, intervals.confidence)
        return replace(self, intervals=intervals, positions=positions)

    # ---- results.json ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The results file: every key of the seed notebook's JSON, same meaning, plus more."""
        return result_dict(self)

    @cached_property
    def sink(self):
        """``positions.sink_effect(self)``: the verdict with and without the first
        ``positions.sink_positions`` positions, computed once per result, as results.json, the
        printed analysis and positions.html all show it and it draws a bootstrap of its own."""
        # Position 0 alone: the same result as without_first_position, whose intervals are drawn already.
        reuse = self.positions.sink_positions == 1 and self.reads is not None
        return sink_effect(self, without=self.without_first_position if reuse else None)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "results") -> GainResult:
        """A result read back from its results.json form (``to_dict``), checked against the schema.

        Args:
            data: the parsed results.json.
            source: what ``data`` was read from, named in a ``FunnelError`` when it does not fit.
        """
        return result_from_dict(cls, data, source)

    def save(self, path: str | os.PathLike) -> Path:
        """Write results.json atomically: a crash never leaves a half-written file.

        Args:
            path: the file to write (its folder must exist), usually ``<out>/results.json``.

        Returns:
            The path written.
        """
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> GainResult:
        """A result read back from a results.json that ``save`` (or ``funnel-tl run``) wrote.

        Args:
            path: the results.json file.
        """
        return cls.from_dict(read_json(path), source=str(path))
