"""One target of a sweep: measured (or resumed from its results.json) into its row."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from funnel_tl.analysis.stats import DEFAULT_METHOD, check_bootstrap
from funnel_tl.errors import FunnelError
from funnel_tl.measure.gains import measure_gains
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.models.loading import load_model
from funnel_tl.results.files import read_json
from funnel_tl.results.folders import describe_os_error, save_elsewhere
from funnel_tl.results.gains import GainResult
from funnel_tl.results.provenance import with_provenance
from funnel_tl.sweep.memory import count_parameters, peak_memory, release_memory, reset_peak_memory
from funnel_tl.sweep.rows import ComparisonRow, one_line, row_from_results, setting_differences

if TYPE_CHECKING:
    from funnel_tl.sweep.plan import Target


# What each model reads once, untimed, before its measurement is timed (see ComparisonRow).
WARM_UP_PROMPT = "The quick brown fox jumps over the lazy dog."


@dataclass(frozen=True)
class SweepOptions:
    """How every target of a sweep is loaded, measured and given intervals; built and checked once
    by ``compare`` (torchrun's ranks get the same), never re-checked per target.

    Attributes:
        measure: the measurement's options, the same for every target.
        device: where each model is loaded (resolved: ``"cpu"`` or ``"cuda"``).
        dtype: as asked (``"auto"``, ``"float32"``...), resolved per model by ``load_model``.
        bootstrap: resamples for each result's 95% intervals and robust verdict; 0: none.
        bootstrap_seed: the resampling's seed.
        progress: each measurement's progress bar (None: on a terminal; False: never).
        device_map: ``load_model``'s, to spread each model over several devices; None: one device.
        max_memory: ``load_model``'s per-device budget beside ``device_map``.
    """

    measure: MeasureOptions
    device: str
    dtype: str = "auto"
    bootstrap: int = 2000
    bootstrap_seed: int = 0
    progress: bool | None = None
    device_map: Any = None
    max_memory: Any = None


def resumed_row(
    target: Target, path: Path, finished: tuple[dict, GainResult], options: SweepOptions, quiet: bool = False
) -> tuple[ComparisonRow, GainResult]:
    """The row of a target finished by an earlier run, its intervals drawn now if asked for
    (``quiet``: without the line saying so, unless its file had to be brought up to date)."""
    data, result = finished
    result = _with_intervals(result, options.bootstrap, options.bootstrap_seed)
    # Every derived value (gains, verdicts) again from the stored sums with today's rules:
    # a file written by an older funnel_tl, or edited by hand, is brought up to date.
    fresh = result.to_dict()
    updated = fresh != data  # new intervals asked for, or derived values that disagreed
    if updated:
        try:
            result.save(path)
        except OSError as error:
            tqdm.write(
                f"{target.label}: could not update {path} ({describe_os_error(error)}); "
                "its row is recomputed all the same",
                file=sys.stderr,
            )
        data = fresh
    if updated or not quiet:
        tqdm.write(
            f"{target.label}: finished earlier, read from {path}"
            + (" (derived values and verdicts recomputed from its sums)" if updated else ""),
            file=sys.stderr,
        )
    return row_from_results(target, data, result, resumed=True), result


def measured_row(
    target: Target,
    prompt_list: list[str],
    path: Path,
    options: SweepOptions,
    quiet: bool = False,
    extra_provenance: dict | None = None,
) -> tuple[ComparisonRow, GainResult | None]:
    """Load, measure and save one target; a failure becomes its row, and the sweep goes on.
    ``extra_provenance``: more for its results file (torchrun's rank and world size)."""
    try:
        data, result = _measure_one(target, prompt_list, path, options, extra_provenance or {})
        row = row_from_results(target, data, result, resumed=False)
    except Exception as error:  # one failing model must not end the sweep
        row, result = (
            ComparisonRow(
                model=target.label,
                slug=target.slug,
                status="failed",
                base=target.base,
                step=target.step,
                revision=target.revision,
                error=one_line(error),
            ),
            None,
        )
        if not quiet:
            tqdm.write(f"{target.label}: FAILED: {row.error}", file=sys.stderr)
    # Only the message is kept: the exception's traceback holds the model's frame, and it is
    # gone once the except block ends, so the model is freed here even when it failed.
    release_memory()
    return row, result


def finished_result(
    path: Path, target: Target, settings: dict, *, say_replaced: bool = False
) -> tuple[dict, GainResult] | None:
    """The results file of a target when it is complete and measured the way asked, else None.

    ``say_replaced``: when a file is there but measured otherwise, print one line naming what
    differs, as the sweep is about to measure the model again and replace it."""
    if not path.is_file():
        return None
    try:
        data = read_json(path)
        result = GainResult.from_dict(data, source=str(path))
    except FunnelError as error:  # unreadable or foreign: measure again and replace it
        if say_replaced:
            tqdm.write(f"{target.label}: replacing {path} (unreadable: {one_line(error)})", file=sys.stderr)
        return None
    differences = setting_differences(data, result, target, settings)
    if differences and say_replaced:
        had, asks = zip(*differences, strict=True)
        tqdm.write(
            f"{target.label}: replacing {path} (measured with {', '.join(had)}; this sweep asks {', '.join(asks)})",
            file=sys.stderr,
        )
    return None if differences else (data, result)


def _measure_one(
    target: Target, prompts: list[str], path: Path, options: SweepOptions, extra_provenance: dict
) -> tuple[dict, GainResult]:
    """Load, measure, save one target; return its results file as written and read back."""
    reset_peak_memory(options.device)
    start = time.perf_counter()
    placement = {"device_map": options.device_map, "max_memory": options.max_memory} if options.device_map else {}
    model = load_model(target.source, device=options.device, dtype=options.dtype, revision=target.revision, **placement)
    loaded = time.perf_counter()
    n_parameters = count_parameters(model)
    check_bootstrap(options.bootstrap, len(prompts), model.cfg.n_layers)  # before the measurement, not after
    # One short prompt through the same path, untimed: the first pass of a process or of a model on a
    # GPU pays one-time costs (kernel selection, cuBLAS handles, allocator growth) that would
    # otherwise land in whichever model happens to be measured first.
    warm_up = MeasureOptions(definition=options.measure.definition, batch_size=1, max_tokens_per_prompt="context")
    measure_gains(model, [WARM_UP_PROMPT], progress=False, options=warm_up)  # a tiny context reads what fits
    measuring = time.perf_counter()
    # A checkpoint's results file names the checkpoint, not only the model (``model_loaded_as`` keeps the model's).
    label = target.label if target.step is not None else options.measure.label
    result = measure_gains(model, prompts, progress=options.progress, options=options.measure.replace(label=label))
    measured = time.perf_counter()
    del model
    peak, kind = peak_memory(options.device)
    max_tokens = options.measure.max_tokens_per_prompt
    result = with_provenance(
        result,
        n_parameters=int(n_parameters),
        revision=target.revision,
        step=target.step,
        seconds=round(measured - start, 3),
        load_seconds=round(loaded - start, 3),
        measure_seconds=round(measured - measuring, 3),
        peak_memory_bytes=peak,
        memory_kind=kind,
        # as asked ("context" or a number), for the resume check
        **({"max_tokens_per_prompt": max_tokens} if max_tokens is not None else {}),
        **extra_provenance,
    )
    result = _with_intervals(result, options.bootstrap, options.bootstrap_seed)
    try:
        result.save(path)
    except OSError as error:  # the measurement is kept, where it fits
        place = save_elsewhere(result.save, "results.json")
        kept = f"saved to {place} instead" if place else "nothing could be saved"
        raise FunnelError(f"measured, but {path} could not be written ({describe_os_error(error)}); {kept}") from None
    data = read_json(path)
    return data, GainResult.from_dict(data, source=str(path))


def _with_intervals(result: GainResult, bootstrap: int, seed: int) -> GainResult:
    """The result with bootstrap intervals drawn as asked (those it holds, when they are the ones asked for).

    ``bootstrap=0`` leaves the result as it is (rows then say robust verdict ``None``).
    """
    if not bootstrap:
        return result
    current = result.intervals
    if current is not None and (current.n_resamples, current.seed, current.method) == (bootstrap, seed, DEFAULT_METHOD):
        return result
    return result.with_intervals(n_resamples=bootstrap, seed=seed)


def gains_at(pairs: Sequence[tuple[float | None, int | None]]) -> list[str]:
    """``(gain, layer)`` pairs as ``"0.309 L1 "``-style cells of one width: gains right-aligned,
    layers left-aligned, so the numbers line up and so do the layer labels.

    >>> gains_at([(0.309, 1), (1234.5, 10)])
    ['   0.309 L1 ', '1234.500 L10']
    """
    gains = [f"{gain:.3f}" for gain, _ in pairs]
    layers = [str(layer) for _, layer in pairs]
    gain_width, layer_width = max(map(len, gains), default=0), max(map(len, layers), default=0)
    return [f"{gain:>{gain_width}} L{layer:<{layer_width}}" for gain, layer in zip(gains, layers, strict=True)]
