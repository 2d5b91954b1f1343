"""results.json: a ``GainResult`` written as its file (every key of the seed notebook's JSON, and more),
read back, and as a tidy table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from funnel_tl.analysis.criteria import not_testable
from funnel_tl.analysis.funnel import comparison_1_4b, funnel_test, summarize
from funnel_tl.analysis.intervals import Intervals
from funnel_tl.analysis.readings import add_readings
from funnel_tl.analysis.robust import robust_funnel_test
from funnel_tl.analysis.sink import sink_unavailable
from funnel_tl.analysis.stats import DEFAULT_CONFIDENCE, dominant_prompts
from funnel_tl.components import COMPONENTS
from funnel_tl.errors import FunnelError
from funnel_tl.measure.reads import ReadSums, definition_roles
from funnel_tl.results.files import prompt_texts, prompts_block, require_pandas
from funnel_tl.results.positions import PositionSums, position_rows
from funnel_tl.results.schema import check_results

if TYPE_CHECKING:
    from funnel_tl.results.gains import GainResult


SCHEMA_VERSION = 1


def result_dict(result: GainResult) -> dict[str, Any]:
    """``GainResult.to_dict``: the results file, every key of the seed notebook's JSON, same meaning, plus more."""
    attn, mlp, combined = (
        summarize(gains, result.layers) for gains in (result.attn_gains, result.mlp_gains, result.combined_gains)
    )
    # Measured on some layers only: the verdicts are null and "not_testable" says why (the
    # keys stay, so a reader of full files finds them in every file).
    why_not = not_testable(result)

    confidence = result.intervals.confidence if result.intervals is not None else DEFAULT_CONFIDENCE
    uncertainty: dict[str, Any] = {
        "dominant_prompts": [flag.to_dict() for flag in dominant_prompts(result, confidence)]
    }
    if result.intervals is not None:
        uncertainty |= {
            "intervals": result.intervals.to_dict(),
            "robust_funnel_test": None if why_not else robust_funnel_test(result).to_dict(),
        }
    data = {
        "schema_version": SCHEMA_VERSION,
        "model": result.model,
        "n_layers": int(result.n_layers),
        **({} if result.all_layers else {"layers": list(result.layers or ())}),
        "hidden_dim": int(result.d_model),
        "n_prompts": int(result.n_prompts),
        "definition": result.definition,
        "parallel_blocks": bool(result.parallel_blocks),
        "drop_first": int(result.drop_first),
        "attention": {
            "gains": _floats(result.attn_gains),
            "min_gain": attn.min_gain,
            "max_gain": attn.max_gain,
            "L_star_min": attn.min_layer,
            "n_contracting": attn.n_contracting,
            "n_expanding": attn.n_expanding,
        },
        "mlp": {
            "gains": _floats(result.mlp_gains),
            "min_gain": mlp.min_gain,
            "max_gain": mlp.max_gain,
            "L_star_max": mlp.max_layer,
            "n_contracting": mlp.n_contracting,
            "n_expanding": mlp.n_expanding,
            # The model's last layer; null when a subset left it out.
            "last_layer_gain": float(result.mlp_gains[-1])
            if (result.layers or ())[-1] == result.n_layers - 1
            else None,
        },
        "combined": {
            "gains": _floats(result.combined_gains),
            "n_net_contracting": combined.n_contracting,
            "n_net_expanding": combined.n_expanding,
            "max_gain": combined.max_gain,
            "max_gain_layer": combined.max_layer,
            "cumulative_gains": _floats(result.cumulative_gains),
        },
        "block": {"gains": _floats(result.block_gains)},
        "funnel_test": None if why_not else funnel_test(result).to_dict(),
        **({"not_testable": why_not} if why_not else {}),
        **uncertainty,
        "comparison_1_4b": None if why_not else comparison_1_4b(result),
        "per_prompt": {
            "n_tokens": [int(n) for n in result.n_tokens],
            **{c: {"out_sum": result.out_sums[c].tolist(), "in_sum": result.in_sums[c].tolist()} for c in COMPONENTS},
        },
        "prompts": prompts_block(result.prompts, result.n_prompts, result.provenance),
        **({"by_position": position_block(result)} if result.positions is not None else {}),
        "provenance": result.provenance,
    }

    return add_readings(result, data)


def position_block(result: GainResult) -> dict[str, Any]:
    """results.json's ``by_position`` block, the sink reading in it where it can be drawn."""
    block = result.positions.to_dict()
    if sink_unavailable(result) is None:  # else no "sink" key, as with the first positions dropped
        block["sink"] = result.sink.to_dict()
    return block


def result_from_dict(cls: type[GainResult], data: dict[str, Any], source: str = "results") -> GainResult:
    """``GainResult.from_dict``: a results file read back, checked against its schema and version."""
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version is None:
        raise FunnelError(
            f"{source} has no schema_version: it is not a funnel_tl results file (an older notebook "
            "JSON holds only averaged gains; rerun `funnel-tl run` to get a full results file)"
        )
    if version != SCHEMA_VERSION:
        raise FunnelError(
            f"{source} has schema_version {version!r}; this funnel_tl reads {SCHEMA_VERSION!r}: "
            "rerun `funnel-tl run` or install the matching funnel_tl"
        )
    check_results(data, source)  # every field read below, of the right type: one line naming a bad one
    intervals = None
    if data.get("intervals") is not None:
        intervals = Intervals.from_dict(data["intervals"], source=source)
    try:
        per_prompt = data["per_prompt"]
        layers = data.get("layers")
        width = data["n_layers"] if layers is None else len(layers)
        result = cls(
            model=data["model"],
            definition=data["definition"],
            n_layers=data["n_layers"],
            d_model=data["hidden_dim"],
            parallel_blocks=data["parallel_blocks"],
            prompts=prompt_texts(data["prompts"]),
            n_tokens=np.asarray(per_prompt["n_tokens"]),
            out_sums={c: np.asarray(per_prompt[c]["out_sum"], dtype=np.float64).reshape(-1, width) for c in COMPONENTS},
            in_sums={c: np.asarray(per_prompt[c]["in_sum"], dtype=np.float64).reshape(-1, width) for c in COMPONENTS},
            drop_first=data.get("drop_first", 0),
            provenance=data.get("provenance", {}),
            intervals=intervals,
            positions=_positions_from_dict(data.get("by_position")),
            layers=None if layers is None else tuple(layers),
            **_readings_from_dict(data, width),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise FunnelError(f"{source} is not a complete funnel_tl results file (missing or bad {error})") from None
    _check_summaries(result, data, source)
    return result


# The summaries a file states, and the attribute that recomputes each from the per-prompt sums.
SUMMARIES = {"attention": "attn_gains", "mlp": "mlp_gains", "combined": "combined_gains", "block": "block_gains"}
# A file's gains are the float64s that wrote it, read back exactly; 1e-9 leaves room for another
# summation order only, far below any edit.
SUMMARY_RTOL = 1e-9


def _check_summaries(result: GainResult, data: dict[str, Any], source: str) -> None:
    """The gains a file states must be those its per-prompt sums give: funnel_tl reads the sums, so
    a hand-edited or damaged summary is named, never silently replaced by the recomputed value."""
    for key, attribute in SUMMARIES.items():
        block = data.get(key)
        if not isinstance(block, dict) or block.get("gains") is None:
            continue
        computed = np.asarray(getattr(result, attribute), dtype=np.float64)  # [layer]
        written = block["gains"]
        if not isinstance(written, list) or len(written) != computed.size:
            raise FunnelError(f"{source}: {key}.gains is not a list of {computed.size} numbers: the file was damaged")
        # Anything but a number (a string, null, true) reads as NaN, which no computed gain equals.
        values = np.array([v if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan for v in written])
        off = ~np.isclose(values, computed, rtol=SUMMARY_RTOL, atol=0.0, equal_nan=True)
        if off.any():
            index = int(np.flatnonzero(off)[0])
            raise FunnelError(
                f"{source}: {key}.gains[{index}] is {written[index]!r}, but the file's per-prompt sums give "
                f"{computed[index]:.6g}: it was edited or damaged (funnel_tl reads the sums; rerun to rewrite it)"
            )


def gain_frame(result: GainResult):
    """``GainResult.to_pandas``: the tidy table."""
    pd = require_pandas()
    rows = gain_rows(result)
    if result.positions is None:
        return pd.DataFrame(rows)

    frame = pd.DataFrame([{**row, "position": "all"} for row in rows] + position_rows(result))
    frame = frame.astype({"position_start": "Int64", "position_stop": "Int64"})  # <NA> on the "all" rows
    leading = ["model", "layer", "component", "position"]
    return frame[leading + [column for column in frame.columns if column not in leading]]


def _readings_from_dict(data: dict, width: int) -> dict[str, Any]:
    """``reads`` and ``token_histograms`` of a results file (absent from files written before them)."""
    # Imported on use: keeps torch out of importing this module.
    from funnel_tl.measure.medians import TokenHistograms

    per_prompt = data["per_prompt"]
    reads = None
    if per_prompt.get("reads") is not None:
        roles = definition_roles(data["definition"], data["parallel_blocks"])
        written = {}
        for component, (out_role, in_role) in roles.items():
            for role, side in ((out_role, "out_sum"), (in_role, "in_sum")):
                written[role] = np.asarray(per_prompt[component][side], dtype=np.float64).reshape(-1, width)
        reads = ReadSums.from_dict(per_prompt["reads"], written, width)
    histograms = data.get("token_histograms")
    return {"reads": reads, "token_histograms": None if histograms is None else TokenHistograms.from_dict(histograms)}


def _positions_from_dict(block):
    if block is None:
        return None

    return PositionSums.from_dict(block)


TIDY_COMPONENTS = ("attn", "mlp", "block", "combined", "cumulative")


def gain_rows(result: GainResult, **extra) -> list[dict[str, Any]]:
    """Tidy rows (dicts) of a result's gains: one per layer and component; ``extra`` columns first."""
    rows = []
    for component in TIDY_COMPONENTS:
        gains = (
            result.combined_gains
            if component == "combined"
            else result.cumulative_gains
            if component == "cumulative"
            else result.gains(component)
        )  # [layer]
        bounds = result.intervals.of(component) if result.intervals is not None else None  # [layer, 2]
        # gains has one row per measured layer (the cumulative: per layer of the measured prefix).
        for row, layer in enumerate((result.layers or ())[: len(gains)]):
            rows.append(
                {
                    **extra,
                    "model": result.model,
                    "layer": layer,
                    "component": component,
                    "gain": float(gains[row]),
                    "ci_low": float(bounds[row, 0]) if bounds is not None else float("nan"),
                    "ci_high": float(bounds[row, 1]) if bounds is not None else float("nan"),
                    "n_prompts": result.n_prompts,
                }
            )
    return rows


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def _nullable_floats(values) -> list[float | None]:
    """Floats with JSON null for NaN (a median outside the histogram's range): strict JSON has no NaN."""
    return [None if not np.isfinite(v) else float(v) for v in values]
