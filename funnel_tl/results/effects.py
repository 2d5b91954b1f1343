"""``EffectResult``: what each sublayer's contribution does to the model's predictions, and effects.json.

Glossary (DESIGN.md §2, "Effects"). For layer ``l``, component ``c`` (``attention``: a =
``blocks.{l}.hook_attn_out``; ``mlp``: m = ``blocks.{l}.hook_mlp_out``) and intervention ``i``
(``zero``, ``mean``, ``scale:s``; ``funnel_tl.measure.interventions``), per prompt, against the clean
forward of the same batch:

- **Δloss** = mean over the prompt's *predicted positions* (a position t whose next token t + 1
  is a token of the prompt, t ≥ ``drop_first``) of the next-token cross-entropy with the
  intervention minus without, in nats;
- **KL** = mean over the prompt's *positions* (t ≥ ``drop_first``; the last one too: it has a
  next-token distribution) of KL(clean ‖ intervened) between the next-token distributions, in nats.

Shapes: ``delta_loss[i][c]`` and ``kl[i][c]`` are ``[prompt, layer]``; ``clean_loss``,
``n_predicted`` and ``n_positions`` are ``[prompt]``. ``layer`` runs over ``layers`` (true
indices, ascending). A layer's effect is the mean over prompts of the per-prompt values; its
interval is ``stats.mean_intervals`` over prompts, as a gain's. ``gains`` is the ``GainResult``
of the same prompts and layers (``measure_gains``), the gain beside each effect.

effects.json: ``effects[i][c]["delta_loss"]`` and ``["kl"]`` (lists over layers), ``clean_loss``,
``intervals``, ``analysis`` (gain against effect, ``effect_analysis``), ``per_prompt``,
``gains`` (the results.json block of ``gains``), ``prompts`` and ``provenance``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from funnel_tl.analysis.effects import gain_versus_effect
from funnel_tl.analysis.intervals import METHODS
from funnel_tl.analysis.stats import (
    DEFAULT_CONFIDENCE,
    DEFAULT_METHOD,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    mean_intervals,
)
from funnel_tl.components import EFFECT_COMPONENTS, GAIN_COMPONENT
from funnel_tl.errors import FunnelError
from funnel_tl.measure.layers import check_measured
from funnel_tl.prompts.sets import prompts_sha256
from funnel_tl.results.files import prompts_block, prompts_subset, read_json, require_pandas, write_json_atomic
from funnel_tl.results.gains import GainResult

if TYPE_CHECKING:  # jaxtyping's shapes for type checkers and the API reference; importing it costs ~0.1 s
    from jaxtyping import Float, Int

EFFECTS_SCHEMA_VERSION = 1
MEASURES = ("delta_loss", "kl")


@dataclass(frozen=True)
class EffectIntervals:
    """Intervals over prompts of every effect: ``delta_loss[i][c]`` and ``kl[i][c]`` ``[layer, 2]``,
    ``clean_loss`` ``[2]``; ``confidence``, ``n_resamples``, ``seed`` and ``method`` say how."""

    confidence: float
    n_resamples: int
    seed: int
    method: str
    clean_loss: np.ndarray
    delta_loss: dict[str, dict[str, np.ndarray]]
    kl: dict[str, dict[str, np.ndarray]]

    def of(self, measure: str, intervention: str, component: str) -> np.ndarray:
        return getattr(self, measure)[intervention][component]

    def to_dict(self) -> dict[str, Any]:
        return {
            "confidence": float(self.confidence),
            "n_resamples": int(self.n_resamples),
            "seed": int(self.seed),
            "method": self.method,
            "method_description": f"{METHODS[self.method].split(';')[0]} of each mean",
            "clean_loss": [float(v) for v in self.clean_loss],
            **{
                name: {c: {m: self.of(m, name, c).tolist() for m in MEASURES} for c in EFFECT_COMPONENTS}
                for name in self.delta_loss
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], interventions, source: str) -> EffectIntervals:
        try:
            tables: dict[str, Any] = {
                m: {
                    name: {c: np.asarray(data[name][c][m], dtype=np.float64) for c in EFFECT_COMPONENTS}
                    for name in interventions
                }
                for m in MEASURES
            }

            if data["method"] not in METHODS:
                raise ValueError(f"intervals.method {data['method']!r}")
            return cls(
                confidence=float(data["confidence"]),
                n_resamples=int(data["n_resamples"]),
                seed=int(data["seed"]),
                method=str(data["method"]),
                clean_loss=np.asarray(data["clean_loss"], dtype=np.float64),
                **tables,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise FunnelError(
                f"{source} has incomplete intervals (missing or bad {error}): rerun funnel-tl effects"
            ) from None


@dataclass(frozen=True)
class EffectResult:
    """Per-prompt Δloss and KL of every intervention on every measured sublayer (see the module docstring)."""

    model: str
    n_layers: int
    layers: tuple[int, ...]
    interventions: tuple[str, ...]
    prompts: tuple[str, ...] | None  # None: texts not kept; their sha256 is in the provenance
    n_predicted: Int[np.ndarray, " prompt"]
    n_positions: Int[np.ndarray, " prompt"]
    clean_loss: Float[np.ndarray, " prompt"]
    delta_loss: dict[str, dict[str, Float[np.ndarray, "prompt layer"]]]
    kl: dict[str, dict[str, Float[np.ndarray, "prompt layer"]]]
    gains: GainResult
    drop_first: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    intervals: EffectIntervals | None = None

    def __post_init__(self):
        object.__setattr__(self, "layers", check_measured(self.layers, self.n_layers))
        object.__setattr__(self, "interventions", tuple(self.interventions))
        if self.prompts is not None:
            object.__setattr__(self, "prompts", tuple(self.prompts))
        for name in ("n_predicted", "n_positions"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=np.int64))
        object.__setattr__(self, "clean_loss", np.asarray(self.clean_loss, dtype=np.float64))
        n_prompts = len(self.clean_loss)
        if self.prompts is not None and len(self.prompts) != n_prompts:
            raise ValueError(f"{len(self.prompts)} prompts but {n_prompts} clean losses")
        for name in ("n_predicted", "n_positions"):
            if getattr(self, name).shape != (n_prompts,) or (n_prompts and getattr(self, name).min() < 1):
                raise ValueError(f"{name} must hold a count of at least 1 per prompt")
        shape = (n_prompts, len(self.layers))
        for measure in MEASURES:
            table = getattr(self, measure)
            if set(table) != set(self.interventions):
                raise ValueError(f"{measure} holds interventions {sorted(table)}, expected {list(self.interventions)}")
            for name in self.interventions:
                if set(table[name]) != set(EFFECT_COMPONENTS):
                    raise ValueError(f"{measure}[{name}] must have the components {EFFECT_COMPONENTS}")
                for component in EFFECT_COMPONENTS:
                    array = np.asarray(table[name][component], dtype=np.float64)
                    if array.shape != shape:
                        raise ValueError(f"{measure}[{name}][{component}] has shape {array.shape}, expected {shape}")
                    if not np.all(np.isfinite(array)):
                        raise ValueError(f"{measure}[{name}][{component}] holds NaN or inf")
                    table[name][component] = array
        if not np.all(np.isfinite(self.clean_loss)):
            raise ValueError("clean losses must be finite")
        if tuple(self.gains.layers) != self.layers or self.gains.n_prompts != n_prompts:
            raise ValueError(
                f"the gains cover {self.gains.n_prompts} prompts x layers {self.gains.layers}, "
                f"the effects {n_prompts} x {self.layers}"
            )

    # ---- display -----------------------------------------------------------------------------
    def __repr__(self) -> str:
        zero = self.interventions[0]
        return (
            f"EffectResult(model={self.model!r}, n_layers={self.n_layers}"
            + ("" if self.all_layers else f", layers={self.layer_spans!r}")
            + f", n_prompts={self.n_prompts}, interventions={list(self.interventions)}, "
            f"clean_loss={self.mean_clean_loss:.4g}, {zero} delta_loss attention="
            f"{_brief(self.effect('delta_loss', zero, 'attention'))} "
            f"mlp={_brief(self.effect('delta_loss', zero, 'mlp'))})"
        )

    # ---- numbers -----------------------------------------------------------------------------
    @property
    def n_prompts(self) -> int:
        return len(self.clean_loss)

    @property
    def all_layers(self) -> bool:
        return self.gains.all_layers  # the same layers (checked in __post_init__)

    @property
    def layer_spans(self) -> str:
        return self.gains.layer_spans

    @property
    def mean_clean_loss(self) -> float:
        return float(self.clean_loss.mean())

    def per_prompt(self, measure: str, intervention: str, component: str) -> Float[np.ndarray, "prompt layer"]:
        """``[prompt, layer]`` Δloss (``measure="delta_loss"``) or KL (``"kl"``) of each prompt.

        Args:
            measure: ``"delta_loss"`` (mean over the predicted positions of the change in
                next-token cross-entropy) or ``"kl"`` (mean over the positions of KL(clean ‖
                intervened)), both in nats.
            intervention: one of ``interventions``, e.g. ``"zero"``, ``"mean"`` or ``"scale:0.5"``.
            component: ``"attention"`` or ``"mlp"``.

        Returns:
            ``[prompt, layer]`` values, ``layer`` over ``layers``.
        """
        if measure not in MEASURES:
            raise FunnelError(f"unknown measure {measure!r}: choose delta_loss or kl")
        table = getattr(self, measure)
        if intervention not in table:
            raise FunnelError(
                f"{self.model}: no intervention {intervention!r} measured (measured: {', '.join(self.interventions)})"
            )
        if component not in EFFECT_COMPONENTS:
            raise FunnelError(f"unknown component {component!r}: choose attention or mlp")
        return table[intervention][component]

    def effect(self, measure: str, intervention: str, component: str) -> Float[np.ndarray, " layer"]:
        """``[layer]``: the mean over prompts of ``per_prompt(measure, intervention, component)``.

        Args:
            measure: ``"delta_loss"`` or ``"kl"`` (nats).
            intervention: one of ``interventions``.
            component: ``"attention"`` or ``"mlp"``.
        """
        return self.per_prompt(measure, intervention, component).mean(axis=0)

    def gain(self, component: str) -> Float[np.ndarray, " layer"]:
        """``[layer]``: the gain of ``component`` (attention or mlp) on the same prompts.

        Args:
            component: ``"attention"`` (``gains.attn_gains``) or ``"mlp"`` (``gains.mlp_gains``).
        """
        return self.gains.gains(GAIN_COMPONENT[component])

    def with_intervals(
        self,
        n_resamples: int | None = None,
        seed: int | None = None,
        confidence: float | None = None,
        method: str | None = None,
    ) -> EffectResult:
        """A new result with intervals over prompts of every effect (``stats.mean_intervals``: t
        intervals by default, ``method="percentile"`` the percentile bootstrap) and of the gains
        beside them (``GainResult.with_intervals``), drawn with the same settings. A KL's lower
        bound is kept ≥ 0 (no divergence is negative).

        Args:
            n_resamples: resamples of the prompts (``stats.DEFAULT_RESAMPLES``, 2,000, if None).
            seed: the resamples' random seed (0 if None).
            confidence: the intervals' coverage, between 0 and 1 (0.95 if None).
            method: ``"t"`` (if None) or ``"percentile"``.

        Returns:
            This result with ``intervals`` (``[layer, 2]`` per measure, intervention and component;
            ``[2]`` for the clean loss) and its ``gains`` with theirs.
        """
        settings: dict[str, Any] = dict(
            n_resamples=DEFAULT_RESAMPLES if n_resamples is None else n_resamples,
            seed=DEFAULT_SEED if seed is None else seed,
            confidence=DEFAULT_CONFIDENCE if confidence is None else confidence,
            method=DEFAULT_METHOD if method is None else method,
        )
        names = self.interventions
        # One draw over every statistic: the same resamples for all of them.
        stacked = np.concatenate(
            [self.clean_loss[:, None]]
            + [self.per_prompt(m, i, c) for m in MEASURES for i in names for c in EFFECT_COMPONENTS],
            axis=1,
        )
        bounds = mean_intervals(stacked, **settings)  # [statistic, 2]
        width, offset = len(self.layers), 1
        tables: dict[str, Any] = {m: {} for m in MEASURES}
        for measure in MEASURES:
            for name in names:
                tables[measure][name] = {}
                for component in EFFECT_COMPONENTS:
                    part = bounds[offset : offset + width]
                    tables[measure][name][component] = np.maximum(part, 0.0) if measure == "kl" else part
                    offset += width
        intervals = EffectIntervals(
            confidence=settings["confidence"],
            n_resamples=settings["n_resamples"],
            seed=settings["seed"],
            method=settings["method"],
            clean_loss=bounds[0],
            **tables,
        )
        return replace(self, intervals=intervals, gains=self.gains.with_intervals(**settings))

    def subset(self, prompt_indices: Sequence[int] | Int[np.ndarray, " index"]) -> EffectResult:
        """A new result over some prompts (intervals dropped: they describe all of them).

        Args:
            prompt_indices: ``[index]`` positions in this result's prompts, at least one; the
                gains beside the effects are subset alike.
        """
        index = np.asarray(prompt_indices, dtype=np.int64)
        if index.size == 0:
            raise FunnelError("a subset needs at least one prompt")
        prompts, provenance = prompts_subset(self.prompts, self.provenance, index)
        pick: dict[str, Any] = {
            m: {i: {c: v[index] for c, v in t.items()} for i, t in getattr(self, m).items()} for m in MEASURES
        }
        return replace(
            self,
            prompts=prompts,
            provenance=provenance,
            n_predicted=self.n_predicted[index],
            n_positions=self.n_positions[index],
            clean_loss=self.clean_loss[index],
            gains=self.gains.subset(index),
            intervals=None,
            **pick,
        )

    def assembled(
        self,
        pieces: Sequence[tuple[Any, EffectResult]],
        prompts: Sequence[str],
        truncation: dict | None = None,
    ) -> EffectResult:
        """torchrun (``distributed.assemble``): one result from each rank's ``(prompt indices, result)``,
        every per-prompt array back in ``prompts``' order, the gains assembled as a run's are.

        Args:
            pieces: ``(indices, result)`` per rank, ``indices`` an integer ``[prompt]`` array of
                where its result's prompts go; together they cover every prompt once.
            prompts: every prompt of the run, in order.
            truncation: the run's truncation record for the provenance (``distributed.assemble``'s).
        """
        # Imported on use: keeps torch out of importing this module.
        from funnel_tl.measure.distributed import assemble

        gains = assemble([(indices, result.gains) for indices, result in pieces], prompts, truncation)

        def place(get) -> np.ndarray:
            first = np.asarray(get(pieces[0][1]))
            whole = np.zeros((len(prompts),) + first.shape[1:], dtype=first.dtype)  # [prompt, ...]
            for indices, result in pieces:
                whole[indices] = get(result)
            return whole

        tables: dict[str, Any] = {
            m: {
                name: {c: place(lambda r, m=m, name=name, c=c: r.per_prompt(m, name, c)) for c in EFFECT_COMPONENTS}
                for name in self.interventions
            }
            for m in MEASURES
        }
        provenance = dict(self.provenance)
        for key in (
            "prompts_sha256",
            "n_tokens_total",
            "padding_fraction",
            "world_size",
            "prompts_per_rank",
            "truncation",
        ):
            provenance.pop(key, None)
            if key in gains.provenance:
                provenance[key] = gains.provenance[key]
        if "effect_settings" in provenance:
            provenance["effect_settings"] = dict(
                provenance["effect_settings"], prompts_sha256=prompts_sha256(prompts), n_prompts=len(prompts)
            )
        return replace(
            self,
            prompts=None if self.prompts is None else tuple(prompts),
            gains=gains,
            n_predicted=place(lambda r: r.n_predicted),
            n_positions=place(lambda r: r.n_positions),
            clean_loss=place(lambda r: r.clean_loss),
            provenance=provenance,
            intervals=None,
            **tables,
        )

    def to_pandas(self):
        """A tidy table: one row per layer, component and intervention (pandas, imported here).

        Columns: model, layer, component (attention, mlp), intervention, delta_loss, kl, gain,
        each with ``_ci_low``/``_ci_high`` (NaN without intervals), clean_loss, n_prompts.

        >>> table = result.to_pandas()  # doctest: +SKIP
        >>> zero_mlp = table.query("intervention == 'zero' and component == 'mlp'")  # doctest: +SKIP
        >>> zero_mlp.plot(x="layer", y="delta_loss")  # doctest: +SKIP
        """
        pd = require_pandas()
        nan = np.full((len(self.layers), 2), np.nan)
        rows = []
        gain_intervals = self.gains.intervals
        for component in EFFECT_COMPONENTS:
            gains = self.gain(component)
            gain_bounds = gain_intervals.of(GAIN_COMPONENT[component]) if gain_intervals is not None else nan
            for name in self.interventions:
                values = {m: self.effect(m, name, component) for m in MEASURES}
                bounds = {
                    m: self.intervals.of(m, name, component) if self.intervals is not None else nan for m in MEASURES
                }
                for row, layer in enumerate(self.layers):
                    rows.append(
                        {
                            "model": self.model,
                            "layer": layer,
                            "component": component,
                            "intervention": name,
                            **{
                                key: float(value)
                                for m in MEASURES
                                for key, value in (
                                    (m, values[m][row]),
                                    (f"{m}_ci_low", bounds[m][row, 0]),
                                    (f"{m}_ci_high", bounds[m][row, 1]),
                                )
                            },
                            "gain": float(gains[row]),
                            "gain_ci_low": float(gain_bounds[row, 0]),
                            "gain_ci_high": float(gain_bounds[row, 1]),
                            "clean_loss": self.mean_clean_loss,
                            "n_prompts": self.n_prompts,
                        }
                    )
        return pd.DataFrame(rows)

    # ---- effects.json ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        analysis = gain_versus_effect(self) if self.intervals is not None else None
        return {
            "schema_version": EFFECTS_SCHEMA_VERSION,
            "kind": "effects",
            "complete": True,
            "model": self.model,
            "n_layers": int(self.n_layers),
            "layers": list(self.layers),
            "hidden_dim": int(self.gains.d_model),
            "n_prompts": int(self.n_prompts),
            "definition": self.gains.definition,
            "drop_first": int(self.drop_first),
            "interventions": list(self.interventions),
            "clean_loss": self.mean_clean_loss,
            **{
                name: {c: {m: [float(v) for v in self.effect(m, name, c)] for m in MEASURES} for c in EFFECT_COMPONENTS}
                for name in self.interventions
            },
            "intervals": None if self.intervals is None else self.intervals.to_dict(),
            "analysis": None if analysis is None else analysis.to_dict(),
            "per_prompt": self.per_prompt_dict(),
            "gains": self.gains.to_dict(),
            "prompts": prompts_block(self.prompts, self.n_prompts, self.provenance),
            "provenance": self.provenance,
        }

    def per_prompt_dict(self, rows: Sequence[int] | Int[np.ndarray, " index"] | None = None) -> dict[str, Any]:
        """The ``per_prompt`` block: counts, clean loss and every per-prompt effect (of ``rows`` only, if given).

        Args:
            rows: prompt indices to keep (in that order), or None for every prompt.
        """
        pick = slice(None) if rows is None else np.asarray(rows, dtype=np.int64)
        return {
            "n_predicted": [int(n) for n in self.n_predicted[pick]],
            "n_positions": [int(n) for n in self.n_positions[pick]],
            "clean_loss": [float(v) for v in self.clean_loss[pick]],
            **{
                name: {c: {m: self.per_prompt(m, name, c)[pick].tolist() for m in MEASURES} for c in EFFECT_COMPONENTS}
                for name in self.interventions
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "effects") -> EffectResult:
        """A result read back from its effects.json form (``to_dict``).

        Args:
            data: the parsed effects.json of a finished measurement.
            source: what ``data`` was read from, named in a ``FunnelError`` when it does not fit.
        """
        if not isinstance(data, dict) or data.get("kind") != "effects":
            raise FunnelError(f"{source} is not a funnel_tl effects file (funnel-tl effects writes one)")
        version = data.get("schema_version")
        if version != EFFECTS_SCHEMA_VERSION:
            raise FunnelError(
                f"{source} has schema_version {version!r}; this funnel_tl reads "
                f"{EFFECTS_SCHEMA_VERSION!r}: rerun funnel-tl effects"
            )
        if not data.get("complete", False):
            raise FunnelError(
                f"{source} holds a measurement that did not finish: rerun the same funnel-tl effects "
                "command to finish it"
            )
        try:
            names = tuple(data["interventions"])
            per_prompt = data["per_prompt"]
            tables: dict[str, Any] = {
                m: {
                    name: {
                        c: np.asarray(per_prompt[name][c][m], dtype=np.float64).reshape(-1, len(data["layers"]))
                        for c in EFFECT_COMPONENTS
                    }
                    for name in names
                }
                for m in MEASURES
            }
            intervals = (
                None if data.get("intervals") is None else EffectIntervals.from_dict(data["intervals"], names, source)
            )
            return cls(
                model=data["model"],
                n_layers=int(data["n_layers"]),
                layers=tuple(data["layers"]),
                interventions=names,
                prompts=None if data["prompts"]["texts"] is None else tuple(data["prompts"]["texts"]),
                n_predicted=per_prompt["n_predicted"],
                n_positions=per_prompt["n_positions"],
                clean_loss=per_prompt["clean_loss"],
                gains=GainResult.from_dict(data["gains"], f"{source} gains"),
                drop_first=int(data.get("drop_first", 0)),
                provenance=data.get("provenance") or {},
                intervals=intervals,
                **tables,
            )
        except FunnelError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise FunnelError(f"{source} is not a complete funnel_tl effects file (missing or bad {error})") from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write effects.json atomically: a crash never leaves a half-written file.

        Args:
            path: the file to write (its folder must exist), usually ``<out>/effects.json``.

        Returns:
            The path written.
        """
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> EffectResult:
        """A result read back from an effects.json that ``save`` (or ``funnel-tl effects``) wrote.

        Args:
            path: the effects.json file.
        """
        return cls.from_dict(read_json(path), source=str(path))


def _brief(values, most: int = 8) -> str:
    shown = [f"{v:.3g}" for v in values]
    if len(shown) > most:
        shown = shown[:3] + ["…"] + shown[-3:]
    return "[" + ", ".join(shown) + "]"
