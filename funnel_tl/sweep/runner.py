"""Sweeps over many models or training checkpoints: one results.json each, one table, one page.

The seed notebook's real question is universality: it measured Pythia-1.4B, then Pythia-6.9B by
hand, and pasted the reference numbers into its code. ``compare`` makes that a single resumable
operation. Each model (or checkpoint) in turn is loaded, measured with ``measure_gains``, written
to ``OUT/<slug>/results.json`` and released before the next, so a sweep needs the memory of its
largest model, not of all of them. Then ``OUT/compare.json`` holds one row per model and
``OUT/compare.html`` the overlaid gains, the verdict table and a models × depth heatmap.

Resume and faults:

- a model whose ``results.json`` is complete and was measured the way the sweep asks (model and
  revision, prompts by sha256, definition, ``drop_first``, dtype, truncation, every layer) is not
  measured again (``force=True`` recomputes); a model is known by its identity, not its spelling
  (a local folder by its resolved path);
- a sweep into a folder that holds a table adds its rows to it and keeps the others; a table of
  other settings is refused before any model loads;
- results files are written atomically, so a run killed mid-model leaves no partial file;
  the temporary file a hard kill can leave behind is removed by the next run;
- one sweep per ``out`` at a time (``outputs.output_lock``): a second gets a FunnelError, and
  the lock of a killed sweep is free again at once;
- a resumed model's row, verdicts included, is recomputed from its stored per-prompt sums by
  today's rules (and its results.json rewritten if it disagreed);
- a model that fails (missing, out of memory, NaN, any other exception) becomes a row with its
  one-line error, and the sweep goes on; ``Comparison.failed`` lists those rows.

Glossary: a *target* is one thing to measure — a model, or one training checkpoint of a model
(``label`` ``"nano-4l@step1000"``); its *slug* is its folder name under ``OUT``; *depth* is the
normalized layer index ``layer / (n_layers - 1)`` (the seed's, so models of different depths
share one axis); a *step* is a training step (Pythia's hub revisions are ``step{N}``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from funnel_tl.analysis.stats import check_bootstrap
from funnel_tl.measure.distributed import world as current_world
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.models.loading import resolve_device, resolve_dtype
from funnel_tl.prompts.sets import load_prompts, prompts_sha256
from funnel_tl.results.folders import claim_output, remove_temporaries
from funnel_tl.results.gains import GainResult
from funnel_tl.sweep.comparison import finish_sweep, kept_rows
from funnel_tl.sweep.memory import collecting_per_target
from funnel_tl.sweep.one_target import SweepOptions, finished_result, measured_row, resumed_row
from funnel_tl.sweep.plan import plan_targets
from funnel_tl.sweep.rows import TableWriter, earlier_rows
from funnel_tl.sweep.torchrun import sweep_sharded

if TYPE_CHECKING:
    from funnel_tl.measure.distributed import World
    from funnel_tl.sweep.comparison import Comparison
    from funnel_tl.sweep.plan import Target
    from funnel_tl.sweep.rows import ComparisonRow


# ---- the sweep ---------------------------------------------------------------------------------
def compare(
    models: str | Sequence[str],
    prompts: str | Sequence[str] = "seed",
    *,
    definition: str = "seed",
    batch_size: int | str = 8,
    device: str = "auto",
    dtype: str = "auto",
    drop_first: int = 0,
    out: str | os.PathLike = "runs/compare",
    force: bool = False,
    checkpoints: str | Sequence[int | str] | None = None,
    bootstrap: int = 2000,
    bootstrap_seed: int = 0,
    progress: bool | None = None,
    self_contained: bool = False,
    by_position: bool = False,
    max_tokens_per_prompt: int | str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    keep_texts: bool = True,
    world: World | None = None,
) -> Comparison | None:
    """Measure several models (or training checkpoints) in turn; write one table and one page.

    Each target is loaded, measured with ``measure_gains``, written to ``out/<slug>/results.json``
    and released before the next; then ``out/compare.json`` and ``out/compare.html``. A model
    already measured in ``out`` the way this sweep asks (the same model and revision, prompts,
    definition, ``drop_first``, truncation, dtype, every layer) is read back, not recomputed; a
    results file measured otherwise is measured again and replaced, with a line on stderr naming
    what differs. A model is known by ``model_identity``: a local folder by its resolved path,
    however it is typed. A sweep into a folder that already holds a table adds to it: rows of
    models it does not name are kept (read back from their results files); a table measured with
    another definition, prompts, ``drop_first``, dtype or truncation is refused in one line before
    any model loads. A model that fails is recorded with its error and the sweep goes on: check
    ``Comparison.failed``. The measurement options are checked once, for every target
    (``MeasureOptions``), before any model loads.

    Args:
        models: bundled names, local checkpoint folders, hub names, or the preset
            ``"pythia-suite"`` (the eight Pythia sizes 70m … 12b).
        prompts: ``"seed"``, a prompt file path, or a list of strings, the same for every model.
        definition: ``"seed"`` or ``"residual"``, as in ``measure_gains``.
        batch_size: prompts per forward, or ``"auto"``; changes no number.
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
        dtype: ``"auto"`` (float16 on CUDA, float32 on the CPU), ``"float32"``, ``"float16"`` or
            ``"bfloat16"``.
        drop_first: leading positions left out of every prompt.
        out: the sweep's folder (one sweep at a time holds it).
        force: measure every target again, even those finished in ``out``.
        checkpoints: None (each model as it is), ``"all"``, or training steps (``[0, 1000]`` or
            ``["step1000"]``): for a bundled model its shipped checkpoints, for a local folder
            its ``step<N>/`` or ``checkpoint-<N>/`` subfolders, for a hub model the revisions
            ``step<N>`` (Pythia's).
        bootstrap: resamples of the prompts for each result's 95% intervals and robust verdict
            (``GainResult.with_intervals``; 0 skips them); drawn from the stored per-prompt sums,
            so a resumed model gets them without being loaded.
        bootstrap_seed: the resampling's seed.
        progress: progress bars (None: on a terminal, the models' bar when there are several).
        self_contained: embed plotly.js in compare.html instead of a shared ``plotly.min.js``.
        by_position: keep each model's gains by position too (``funnel-tl report OUT`` then draws
            each model's positions.html).
        max_tokens_per_prompt: truncate longer prompts (a number or ``"context"``).
        device_map: spread each model over several devices (``load_model``).
        max_memory: the per-device budget beside ``device_map``.
        keep_texts: False leaves the prompt texts out of every results.json (their count and
            sha256 stay, and so does resuming: a model is recognised by that sha256).
        world: a ``distributed.World``; default torchrun's when launched by it. Under torchrun
            the targets not yet finished are dealt over the ranks (``assign_targets``): each is
            measured by one rank, which alone loads it, and rank 0 writes the table and page.
            ``out`` must be one folder all ranks see (a shared disk across nodes).

    Returns:
        The ``Comparison`` (rows ``[model]``, each ok row's ``GainResult``) on rank 0; None on
        torchrun's other ranks.

    >>> from funnel_tl import compare
    >>> sweep = compare(["EleutherAI/pythia-70m", "EleutherAI/pythia-160m"], out="runs/two")  # doctest: +SKIP
    >>> sweep.figure().show()  # doctest: +SKIP
    """
    check_bootstrap(bootstrap, seed=bootstrap_seed)
    # Checked once here, for every target: left to each model, a typo would fail every model in turn.
    measure = MeasureOptions(
        definition=definition,
        batch_size=batch_size,
        drop_first=drop_first,
        by_position=by_position,
        max_tokens_per_prompt=max_tokens_per_prompt,
        keep_texts=keep_texts,
    )
    prompt_list = load_prompts(prompts)  # before any model loads: a bad prompt file fails fast
    targets = plan_targets(models, checkpoints)
    device = resolve_device(device)
    options = SweepOptions(
        measure=measure,
        device=device,
        dtype=dtype,
        bootstrap=int(bootstrap),
        bootstrap_seed=int(bootstrap_seed),
        progress=False if progress is False else None,
        device_map=device_map,
        max_memory=max_memory,
    )
    settings = {
        "definition": measure.definition,
        "n_prompts": len(prompt_list),
        "prompts_sha256": prompts_sha256(prompt_list),
        "drop_first": measure.drop_first,
        "dtype": str(resolve_dtype(dtype, device)).removeprefix("torch."),
        "device": device,
        "batch_size": measure.batch_size,
        "bootstrap": options.bootstrap,
        "bootstrap_seed": options.bootstrap_seed,
        **({"by_position": True} if measure.by_position else {}),
        **({} if measure.max_tokens_per_prompt is None else {"max_tokens_per_prompt": measure.max_tokens_per_prompt}),
    }

    group = world if world is not None else current_world()
    if group.distributed:
        return sweep_sharded(
            targets,
            prompt_list,
            Path(out),
            settings,
            group,
            force=force,
            options=options,
            self_contained=self_contained,
        )
    with claim_output(out) as out:  # one sweep per folder: a second would interleave compare.json
        return _sweep(
            targets,
            prompt_list,
            settings,
            out,
            force=force,
            options=options,
            progress=progress,
            self_contained=self_contained,
        )


def _sweep(
    targets: list[Target],
    prompt_list: list[str],
    settings: dict,
    out: Path,
    *,
    force: bool,
    options: SweepOptions,
    progress: bool | None,
    self_contained: bool = False,
) -> Comparison:
    """The sweep itself, with ``out`` checked and locked by ``compare``; ``options`` go to every target."""
    earlier = earlier_rows(out, settings)  # before any model loads: a table of other settings is refused
    table = TableWriter(out, settings, earlier)
    rows: list[ComparisonRow] = []
    results: dict[str, GainResult] = {}
    show = progress if progress is not None else len(targets) > 1
    bar = tqdm(targets, desc="models", unit="model", disable=not show)
    with collecting_per_target():
        for target in bar:
            # A local folder's label is its absolute path: the bar names its last part.
            bar.set_postfix_str(Path(target.label).name if os.path.isabs(target.label) else target.label, refresh=True)
            path = out / target.slug / "results.json"
            remove_temporaries(path.parent)
            finished = None if force else finished_result(path, target, settings, say_replaced=True)
            result: GainResult | None
            if finished is not None:
                row, result = resumed_row(target, path, finished, options)
            else:
                row, result = measured_row(target, prompt_list, path, options)
            rows.append(row)
            if result is not None:
                results[target.label] = result
            table.put(row)  # a sweep stopped half way still has its table, at most TABLE_WRITE_SECONDS old
    bar.close()
    rows, results = kept_rows(earlier, targets, rows, results, out, settings, options)
    return finish_sweep(rows, results, settings, out, self_contained)
