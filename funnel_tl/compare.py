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

import contextlib
import dataclasses
import gc
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .errors import FunnelError, one_line as plain_one_line
from .funnel import funnel_test, summarize
from .gains import measure_gains
from .models import (CHECKPOINT_FOLDER, bundled_checkpoints, bundled_models, load_model, resolve_device,
                     resolve_dtype)
from .outputs import (check_output_folder, claim_output, describe_os_error, remove_temporaries, save_elsewhere,
                      slug)
from .prompts import check_drop_first, load_prompts, prompts_sha256
from .results import DEFINITIONS, GainResult, read_json, write_json_atomic
from .schema import check_compare
from .stats import DEFAULT_METHOD, check_bootstrap, robust_funnel_test

COMPARE_SCHEMA_VERSION = 1

# The eight Pythia sizes the seed's universality question is about (deduplicated weights; the
# "-deduped" twins are separate hub repositories and can be named explicitly).
PYTHIA_SUITE: tuple[str, ...] = tuple(
    f"EleutherAI/pythia-{size}" for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
)
PRESETS: dict[str, tuple[str, ...]] = {"pythia-suite": PYTHIA_SUITE}

# What each model reads once, untimed, before its measurement is timed (see ComparisonRow).
WARM_UP_PROMPT = "The quick brown fox jumps over the lazy dog."

# Pythia's published training checkpoints (hub revisions step{N}): step 0, ten log-spaced steps
# 1 … 512, then every 1000 steps to 143000 — 154 in all (Biderman et al. 2023).
PYTHIA_STEPS: tuple[int, ...] = (0,) + tuple(2**k for k in range(10)) + tuple(range(1000, 143001, 1000))


# ---- what to measure ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One model or training checkpoint to measure, and where its results go.

    ``label`` names it in tables, figures and ``results.json`` (``"EleutherAI/pythia-70m"``,
    ``"nano-4l@step1000"``); ``source`` and ``revision`` are what ``load_model`` receives;
    ``base`` is the model a checkpoint belongs to (the label itself for a plain model).
    """

    label: str
    source: str
    base: str
    revision: str | None = None
    step: int | None = None

    @property
    def slug(self) -> str:
        return slug(self.label)


# Pythia's sizes by their short names (``pythia-70m``, ``pythia-1.4b-deduped``): EleutherAI's hub repositories.
PYTHIA_NAME = re.compile(r"^pythia-\d+(?:\.\d+)?[mb](?:-deduped)?$")


def expand_models(models: str | Sequence[str]) -> list[str]:
    """Model names with presets expanded, in the order given.

    Each item may list several, comma-separated (``"pythia-70m,pythia-160m"``; a local folder
    whose own name holds a comma is taken whole). Pythia's sizes may be named short
    (``pythia-410m`` is ``EleutherAI/pythia-410m``) unless a bundled model or a local folder has
    that name.

    >>> expand_models(["pythia-suite"])[:2]
    ['EleutherAI/pythia-70m', 'EleutherAI/pythia-160m']
    >>> expand_models("pythia-70m,pythia-1.4b-deduped")
    ['EleutherAI/pythia-70m', 'EleutherAI/pythia-1.4b-deduped']
    """
    names = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    expanded: list[str] = []
    for given in names:
        given = str(given)
        parts = [given] if "," not in given or Path(given).expanduser().exists() else given.split(",")
        for name in (part.strip() for part in parts):
            if not name:
                raise FunnelError(f"empty model name in --models {given!r}: separate names by one comma")
            if PYTHIA_NAME.match(name) and name not in bundled_models() and not Path(name).is_dir():
                name = f"EleutherAI/{name}"
            expanded.extend(PRESETS.get(name, (name,)))
    if not expanded:
        raise FunnelError("no models to compare: give at least one with --models")
    return expanded


def model_identity(name: str) -> str:
    """What a sweep calls a model, however it was typed: a local folder by its resolved path
    (``ckpts``, ``ckpts/``, ``./ckpts`` and ``/abs/ckpts`` are one model, one results folder), a
    hub name without a trailing slash, a bundled name as it is.

    >>> model_identity("EleutherAI/pythia-70m/")
    'EleutherAI/pythia-70m'
    """
    name = str(name)
    if name in bundled_models():
        return name
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    return name.rstrip("/") or name


def parse_steps(checkpoints) -> str | list[int] | None:
    """``None``, ``"all"``, or the training steps asked for, sorted and deduplicated.

    Accepts ``"all"``, an int, ``"1000"``, ``"step1000"`` or a list of those.

    >>> parse_steps(["step1000", 0, "512"])
    [0, 512, 1000]
    >>> parse_steps("all")
    'all'
    """
    if checkpoints is None:
        return None
    items = [checkpoints] if isinstance(checkpoints, (str, int)) else list(checkpoints)
    if not items:
        return None
    if any(str(item) == "all" for item in items):
        if len(items) > 1:
            raise FunnelError("--checkpoints takes either 'all' or a list of steps, not both")
        return "all"
    steps = set()
    for item in items:
        match = re.fullmatch(r"(?:step)?(\d+)", str(item).strip())
        if not match:
            raise FunnelError(f"bad checkpoint {item!r}: give 'all' or steps such as 0 1000 step143000")
        steps.add(int(match.group(1)))
    return sorted(steps)


def local_checkpoints(folder: str | os.PathLike) -> dict[int, Path]:
    """Training checkpoints in a local folder: ``step<N>/`` or ``checkpoint-<N>/`` subfolders
    holding a ``config.json``, by step (numerically: ``step500`` comes before ``step10000``)."""
    found = {}
    for child in Path(folder).iterdir():
        match = CHECKPOINT_FOLDER.match(child.name)
        if match and (child / "config.json").is_file():
            found[int(match.group(1))] = child
    return dict(sorted(found.items()))


def _pick(available: Iterable[int], steps, name: str) -> list[int]:
    available = sorted(available)
    if steps == "all":
        return available
    missing = [step for step in steps if step not in available]
    if missing:
        shown = ", ".join(str(s) for s in available[:12]) + (" …" if len(available) > 12 else "")
        raise FunnelError(f"{name} has no checkpoint at step {missing[0]}: it has steps {shown or 'none'}")
    return list(steps)


def checkpoint_targets(model: str, steps) -> list[Target]:
    """The training checkpoints of one model, in step order.

    - a bundled name: its shipped checkpoints, loaded as ``load_model(name, revision="step<N>")``;
    - a local folder: its ``step<N>/`` or ``checkpoint-<N>/`` subfolders, loaded by path;
    - a hub name: the revisions ``step<N>``; ``"all"`` is known offline only for Pythia.
    """
    model = model_identity(model)
    if model in bundled_models():
        available = bundled_checkpoints(model)
        if not available:
            raise FunnelError(f"bundled model {model} ships no training checkpoints: leave out --checkpoints")
        return [Target(f"{model}@step{step}", model, model, f"step{step}", step)
                for step in _pick(available, steps, model)]
    folder = Path(model).expanduser()
    if folder.is_dir():
        available = local_checkpoints(folder)
        if not available:
            raise FunnelError(f"{folder} holds no step<N>/ or checkpoint-<N>/ folders with a config.json: "
                              "leave out --checkpoints to measure it as one model")
        return [Target(f"{model}@step{step}", str(available[step].resolve()), model, None, step)
                for step in _pick(available, steps, model)]
    if steps == "all":
        if not re.match(r"^EleutherAI/pythia-", model):
            raise FunnelError(f"cannot list the checkpoints of {model} offline: name the steps, "
                              "e.g. --checkpoints 0 1000 143000")
        steps = list(PYTHIA_STEPS)
    return [Target(f"{model}@step{step}", model, model, f"step{step}", step) for step in steps]


def plan_targets(models: str | Sequence[str], checkpoints=None) -> list[Target]:
    """Every target of a sweep: the models in the order given, each one's checkpoints by step.

    Targets are named by ``model_identity``: a local folder by its resolved path, so a rerun
    that types it otherwise finds the same results folders.

    >>> [t.label for t in plan_targets(["EleutherAI/pythia-70m"], checkpoints=["step1000", 0])]
    ['EleutherAI/pythia-70m@step0', 'EleutherAI/pythia-70m@step1000']
    """
    steps = parse_steps(checkpoints)
    targets: list[Target] = []
    for model in expand_models(models):
        if steps is not None:
            targets.extend(checkpoint_targets(model, steps))
            continue
        folder = Path(model).expanduser()
        if folder.is_dir() and not (folder / "config.json").is_file() and local_checkpoints(folder):
            raise FunnelError(f"{model} holds training checkpoints, not one model: add --checkpoints all "
                              "(or a list of steps)")
        model = model_identity(model)
        targets.append(Target(model, model, model))
    labels, slugs = {}, {}
    for target in targets:
        if target.label in labels:
            raise FunnelError(f"{target.label} is named twice: give each model once")
        if target.slug in slugs:
            raise FunnelError(f"{target.label} and {slugs[target.slug]} would share the folder "
                              f"{target.slug}: rename one or run them into different --out folders")
        labels[target.label] = slugs[target.slug] = target.label
    return targets


# ---- one row per model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ComparisonRow:
    """One model's line in ``compare.json``: shape, verdicts, extremes, cost, and status.

    Layers are 0-based. A gain below 1 contracts. ``funnel_confirmed`` is the seed's verdict;
    ``robust_funnel_confirmed`` the verdict on intervals over prompts when the results file holds
    them (``None`` otherwise). ``peak_memory_bytes`` is ``torch.cuda.max_memory_allocated`` on a
    GPU and the process's peak resident memory during this model on the CPU (``memory_kind``
    says which). ``measure_seconds`` times the measurement alone, after ``load_seconds`` of
    loading and one untimed warm-up prompt, so that models compare: the first model of a run no
    longer carries the library imports and first-kernel costs (nano-4l's first checkpoint took
    2.7 s against 0.1 s for the next, all of it in loading); ``seconds`` is the whole (load,
    warm-up, measure). ``resumed`` rows were measured by an earlier run; their times are that run's
    (``measure_seconds`` None when it did not record one).
    """

    model: str
    slug: str
    status: str  # "ok" or "failed"
    base: str = ""
    step: int | None = None
    revision: str | None = None
    error: str | None = None
    resumed: bool = False
    n_layers: int | None = None
    hidden_dim: int | None = None
    n_parameters: int | None = None
    parallel_blocks: bool | None = None
    funnel_confirmed: bool | None = None
    robust_funnel_confirmed: bool | None = None
    has_intervals: bool = False
    attn_contracting: int | None = None
    mlp_contracting: int | None = None
    attn_min_gain: float | None = None
    attn_min_layer: int | None = None
    attn_max_gain: float | None = None
    attn_max_layer: int | None = None
    mlp_min_gain: float | None = None
    mlp_min_layer: int | None = None
    mlp_max_gain: float | None = None
    mlp_max_layer: int | None = None
    last_layer_mlp_gain: float | None = None
    combined_max_gain: float | None = None
    combined_max_layer: int | None = None
    seconds: float | None = None
    load_seconds: float | None = None
    measure_seconds: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None

    def __post_init__(self):
        if self.status not in ("ok", "failed"):
            raise ValueError(f"status must be 'ok' or 'failed', got {self.status!r}")
        if (self.status == "failed") != (self.error is not None):
            raise ValueError("a failed row needs its error, and only a failed row has one")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ComparisonRow":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def row_from_results(target: Target, data: dict[str, Any], result: GainResult, resumed: bool) -> ComparisonRow:
    """The row of a measured model (the same whether fresh or resumed).

    Gains and verdicts derive from the per-prompt sums of ``result`` by today's rules, never from
    what the file says; ``data`` supplies only the provenance (parameters, time, memory).
    """
    attn, mlp, combined = summarize(result.attn_gains), summarize(result.mlp_gains), summarize(result.combined_gains)
    provenance = data.get("provenance", {})
    return ComparisonRow(
        model=target.label, slug=target.slug, status="ok", base=target.base, step=target.step,
        revision=target.revision, resumed=resumed,
        n_layers=result.n_layers, hidden_dim=result.d_model, n_parameters=provenance.get("n_parameters"),
        parallel_blocks=result.parallel_blocks,
        funnel_confirmed=bool(funnel_test(result).funnel_confirmed),
        robust_funnel_confirmed=robust_funnel_test(result).funnel_confirmed if result.intervals is not None else None,
        has_intervals=result.intervals is not None,
        attn_contracting=attn.n_contracting, mlp_contracting=mlp.n_contracting,
        attn_min_gain=attn.min_gain, attn_min_layer=attn.min_layer,
        attn_max_gain=attn.max_gain, attn_max_layer=attn.max_layer,
        mlp_min_gain=mlp.min_gain, mlp_min_layer=mlp.min_layer,
        mlp_max_gain=mlp.max_gain, mlp_max_layer=mlp.max_layer,
        last_layer_mlp_gain=float(result.mlp_gains[-1]),
        combined_max_gain=combined.max_gain, combined_max_layer=combined.max_layer,
        seconds=provenance.get("seconds"), load_seconds=provenance.get("load_seconds"),
        measure_seconds=provenance.get("measure_seconds"), peak_memory_bytes=provenance.get("peak_memory_bytes"),
        memory_kind=provenance.get("memory_kind"),
    )


def one_line(error: BaseException) -> str:
    """A model's failure as one line for its row: ``errors.one_line``, but what to do where a
    sweep can say it (out of GPU memory, a file it cannot write)."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return "out of GPU memory: use --dtype float16, a smaller --batch-size, or a larger GPU"
    if isinstance(error, OSError) and error.filename:
        return f"cannot write {error.filename}: {describe_os_error(error)}"
    return plain_one_line(error)


# ---- the sweep ---------------------------------------------------------------------------------
def compare(models: str | Sequence[str], prompts: str | Sequence[str] = "seed", *, definition: str = "seed",
            batch_size: int = 8, device: str = "auto", dtype: str = "auto", drop_first: int = 0,
            out: str | os.PathLike = "runs/compare", force: bool = False, checkpoints=None,
            bootstrap: int = 2000, bootstrap_seed: int = 0, progress: bool | None = None,
            self_contained: bool = False, by_position: bool = False, max_tokens_per_prompt: int | str | None = None,
            device_map=None, max_memory=None, keep_texts: bool = True, world=None) -> "Comparison | None":
    """Measure several models (or training checkpoints) in turn; write one table and one page.

    ``models``: bundled names, local checkpoint folders, hub names, or the preset
    ``"pythia-suite"`` (the eight Pythia sizes 70m … 12b). ``checkpoints``: ``None`` (each model
    as it is), ``"all"``, or a list of training steps (``[0, 1000]`` or ``["step1000"]``): for
    a bundled model its shipped checkpoints, for a local folder its ``step<N>/`` or
    ``checkpoint-<N>/`` subfolders, for a hub model the revisions ``step<N>`` (Pythia's).
    ``bootstrap`` resamples of the prompts give each result its 95% intervals and the robust
    verdict, where this funnel_tl draws them (``GainResult.with_intervals``; 0 skips them); they
    come from the stored per-prompt sums, so a resumed model gets them without being loaded.
    ``by_position`` keeps each model's gains by position too (``measure_gains``; ``funnel-tl
    report OUT`` then draws each model's positions.html).
    The other options are ``measure_gains``'s and ``load_model``'s. Writes
    ``out/<slug>/results.json`` per model, ``out/compare.json`` and ``out/compare.html``.

    ``max_tokens_per_prompt`` truncates long prompts (``measure_gains``); ``device_map`` and
    ``max_memory`` spread each model over several devices (``load_model``). ``keep_texts=False``
    leaves the prompt texts out of every model's results.json (their count and sha256 stay, and
    so does resuming: a model is recognised by that sha256).

    Under torchrun (or with ``world``, a ``distributed.World``), the targets not yet finished are
    dealt over the ranks (``assign_targets``): each is measured by one rank, each rank loads only its
    own, and rank 0 writes the table and page once all are done and returns the ``Comparison``
    (the other ranks return ``None``). ``out`` must be one folder all ranks see (a shared disk
    across nodes).

    A model already measured in ``out`` the way this sweep asks (the same model and revision,
    prompts, definition, ``drop_first``, truncation, dtype, every layer) is read back, not
    recomputed, unless ``force``; a results file measured otherwise is measured again and
    replaced, with a line on stderr naming what differs. A model is known by ``model_identity``:
    a local folder by its resolved path, however it is typed. A sweep into a folder that already
    holds a table adds to it: rows of models it does not name are kept (read back from their
    results files); a table measured with another definition, prompts, ``drop_first``, dtype or
    truncation is refused in one line before any model loads. A model that fails is recorded
    with its error and the sweep goes on: check ``Comparison.failed``.

    >>> from funnel_tl import compare
    >>> sweep = compare(["EleutherAI/pythia-70m", "EleutherAI/pythia-160m"], out="runs/two")  # doctest: +SKIP
    >>> sweep.figure().show()  # doctest: +SKIP
    """
    check_bootstrap(bootstrap, seed=bootstrap_seed)
    prompt_list = load_prompts(prompts)  # before any model loads: a bad prompt file fails fast
    check_drop_first(drop_first)
    # Checked once here: left to each model, a typo would fail every model of the sweep in turn.
    if definition not in DEFINITIONS:
        raise FunnelError(f"unknown definition {definition!r}: choose seed or residual")
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise FunnelError(f"batch size must be an integer, at least 1, or auto, got {batch_size!r}")
    targets = plan_targets(models, checkpoints)
    device = resolve_device(device)
    dtype_name = str(resolve_dtype(dtype, device)).removeprefix("torch.")
    settings = {
        "definition": definition, "n_prompts": len(prompt_list), "prompts_sha256": prompts_sha256(prompt_list),
        "drop_first": int(drop_first), "dtype": dtype_name, "device": device, "batch_size": batch_size if batch_size == "auto" else int(batch_size),
        "bootstrap": int(bootstrap), "bootstrap_seed": int(bootstrap_seed),
        **({"by_position": True} if by_position else {}),
    }
    if max_tokens_per_prompt is not None:
        settings["max_tokens_per_prompt"] = max_tokens_per_prompt
    options = dict(device=device, dtype=dtype, definition=definition, batch_size=batch_size, drop_first=drop_first,
                   bootstrap=bootstrap, bootstrap_seed=bootstrap_seed, progress=False if progress is False else None,
                   max_tokens_per_prompt=max_tokens_per_prompt, device_map=device_map, max_memory=max_memory,
                   by_position=by_position, keep_texts=keep_texts)
    from .distributed import world as current_world

    group = world if world is not None else current_world()
    if group.distributed:
        return _sweep_sharded(targets, prompt_list, Path(out), settings, group, force=force, options=options,
                              self_contained=self_contained)
    with claim_output(out) as out:  # one sweep per folder: a second would interleave compare.json
        return _sweep(targets, prompt_list, settings, out, force=force, options=options, progress=progress,
                      self_contained=self_contained)


def _sweep(targets: list[Target], prompt_list: list[str], settings: dict, out: Path, *, force: bool,
           options: dict, progress: bool | None, self_contained: bool = False) -> "Comparison":
    """The sweep itself, with ``out`` checked and locked by ``compare``; ``options`` go to ``_measure_one``."""
    earlier = earlier_rows(out, settings)  # before any model loads: a table of other settings is refused
    table = _TableWriter(out, settings, earlier)
    rows: list[ComparisonRow] = []
    results: dict[str, GainResult] = {}
    show = progress if progress is not None else len(targets) > 1
    bar = tqdm(targets, desc="models", unit="model", disable=not show)
    with _collecting_per_target():
        for target in bar:
            # A local folder's label is its absolute path: the bar names its last part.
            bar.set_postfix_str(Path(target.label).name if os.path.isabs(target.label) else target.label,
                                refresh=True)
            path = out / target.slug / "results.json"
            remove_temporaries(path.parent)
            finished = None if force else _finished(path, target, settings, say_replaced=True)
            if finished is not None:
                row, result = _resumed_row(target, path, finished, options["bootstrap"], options["bootstrap_seed"])
            else:
                row, result = _measured_row(target, prompt_list, path, options)
            rows.append(row)
            if result is not None:
                results[target.label] = result
            table.put(row)  # a sweep stopped half way still has its table, at most TABLE_WRITE_SECONDS old
    bar.close()
    rows, results = _kept(earlier, targets, rows, results, out, settings, options)
    return _finish(rows, results, settings, out, self_contained)


# compare.json is rewritten during a sweep when this long has passed since the last write, and at
# its end: after every row, a sweep of 1,232 small checkpoints wrote the growing table 1,232 times.
TABLE_WRITE_SECONDS = 10.0
TABLE_WRITE_SHARE = 50  # ... or this many times the last write's own time, whichever is longer


class _TableWriter:
    """``compare.json`` while a sweep runs: the earlier table's rows, each replaced as this sweep
    finishes it, written when ``TABLE_WRITE_SECONDS`` (or 50 times the last write's own time)
    have passed — so its cost is a bounded share of the sweep, however many rows."""

    def __init__(self, out: Path, settings: dict, earlier: Sequence["ComparisonRow"]):
        self.path, self.settings = out / "compare.json", settings
        self.rows = {row.model: row for row in earlier}
        self.spelled = {_row_identity(row): row.model for row in earlier}  # see _kept
        self.due = -math.inf

    def put(self, row: "ComparisonRow") -> None:
        earlier = self.spelled.get(row.model)
        if earlier is not None and earlier != row.model:  # the same model under its older spelling
            self.rows.pop(earlier, None)
        self.rows[row.model] = row
        if time.monotonic() >= self.due:
            self.write()

    def write(self) -> None:
        start = time.monotonic()
        try:
            write_json_atomic(self.path, _compare_dict(ordered_rows(self.rows.values()), self.settings))
        except OSError as error:
            tqdm.write(f"could not write {self.path} ({describe_os_error(error)}); going on", file=sys.stderr)
        now = time.monotonic()
        self.due = now + max(TABLE_WRITE_SECONDS, TABLE_WRITE_SHARE * (now - start))


def ordered_rows(rows: Iterable["ComparisonRow"]) -> list["ComparisonRow"]:
    """A table's rows in order: each model where it first appears, its checkpoints by step as
    numbers (step2 before step1000), a plain model before its checkpoints.

    >>> rows = [ComparisonRow(f"m@step{s}", "x", "ok", base="m", step=s) for s in (1000, 2)]
    >>> [row.step for row in ordered_rows(rows + [ComparisonRow("other", "o", "ok", base="other")])]
    [2, 1000, None]
    """
    blocks: dict[str, list[ComparisonRow]] = {}
    for row in rows:
        blocks.setdefault(row.base or row.model, []).append(row)
    return [row for block in blocks.values()
            for row in sorted(block, key=lambda row: (row.step is not None, row.step or 0))]


# Settings that change a number: a table holds rows measured one way only.
TABLE_SETTINGS = ("definition", "prompts_sha256", "drop_first", "dtype", "max_tokens_per_prompt")


def read_compare_json(path: Path) -> dict[str, Any]:
    """``compare.json`` read and checked to be a funnel_tl table of this schema (``schema.check_compare``)."""
    data = check_compare(read_json(path), str(path))
    if data.get("kind") != "funnel_tl.compare" or data.get("schema_version") != COMPARE_SCHEMA_VERSION:
        raise FunnelError(f"{path} is not a funnel_tl compare file of schema "
                          f"{COMPARE_SCHEMA_VERSION}: rerun `funnel-tl compare`")
    return data


def earlier_rows(out: Path, settings: dict) -> list["ComparisonRow"]:
    """The rows of the table already in ``out`` (none when there is none), which a sweep into
    ``out`` adds to and never drops; a table measured with other settings is refused in one line,
    before any model loads (one folder, one table: its rows must compare)."""
    path = out / "compare.json"
    if not path.is_file():
        return []
    data = read_compare_json(path)
    rows = [ComparisonRow.from_dict(row) for row in data.get("models", [])]
    if any(row.ok for row in rows):
        differ = [(f"{key}={data.get(key)}", f"{key}={settings.get(key)}") for key in TABLE_SETTINGS
                  if data.get(key) != settings.get(key)]
        if differ:
            had, asks = zip(*differ)
            raise FunnelError(f"{path} is a table of {len(rows)} rows measured with {', '.join(had)}; this sweep asks "
                              f"{', '.join(asks)}: give another --out (one folder holds one table), or remove "
                              "that compare.json to start its table again")
    return rows


def _kept(earlier: Sequence["ComparisonRow"], targets: Sequence["Target"], rows: list["ComparisonRow"],
          results: dict, out: Path, settings: dict, options: dict) -> tuple[list["ComparisonRow"], dict]:
    """This sweep's rows with the earlier table's other rows, each read back from its results
    file (a row whose file is gone or no longer matches says so, and stays), in table order."""
    named = {target.label for target in targets}
    order, others = [], []  # the final table's labels in the earlier table's order; rows kept as they are
    for row in earlier:
        if row.model in named:
            order.append(row.model)
        elif _row_identity(row) in named:
            # A table written before models were known by identity names a local folder as it was
            # typed (``ckpts@step0``): where that is one of this run's models, this run's row replaces it.
            order.append(_row_identity(row))
        else:
            order.append(row.model)
            others.append(row)
    kept = []
    for row in others:
        row = dataclasses.replace(row, base=model_identity(row.base)) if row.base else row  # grouped by identity
        if row.ok:
            target = Target(row.model, row.base or row.model, row.base or row.model, row.revision, row.step)
            path = out / row.slug / "results.json"
            finished = _finished(path, target, settings)
            if finished is not None:
                row, results[row.model] = _resumed_row(target, path, finished, options["bootstrap"],
                                                       options["bootstrap_seed"], quiet=True)
            else:
                row = dataclasses.replace(
                    row, status="failed", resumed=True,
                    error=f"{path} is gone or no longer matches this table: name this model in a rerun to measure it again")
        kept.append(row)
    if others:
        tqdm.write(f"kept {len(others)} rows of the table already in {out} (models this run does not name)",
                   file=sys.stderr)
    table: dict[str, ComparisonRow | None] = dict.fromkeys(order)  # each row in its place, new ones after
    table.update({row.model: row for row in kept + rows})
    return ordered_rows(table.values()), results


def _row_identity(row: "ComparisonRow") -> str:
    """The label a row's model has today: ``model_identity`` of its name, and its step."""
    suffix = f"@step{row.step}"
    if row.step is not None and row.model.endswith(suffix):
        return model_identity(row.model[: -len(suffix)]) + suffix
    return model_identity(row.model)


def _finish(rows: list["ComparisonRow"], results: dict, settings: dict, out: Path,
            self_contained: bool) -> "Comparison":
    """The ``Comparison`` of a finished sweep, its compare.json and compare.html written."""
    comparison = Comparison(rows=tuple(rows), results=results, settings=settings, out=out)
    try:
        comparison.save(out, self_contained=self_contained)
    except OSError as error:
        measured = sum(row.ok for row in rows)
        raise FunnelError(f"{measured} of {len(rows)} models measured (their results.json files are in {out}), but "
                          f"compare.json/compare.html could not be written ({describe_os_error(error)}): free space "
                          "and rerun the same command, which reads them back without measuring again") from None
    return comparison


def _resumed_row(target: "Target", path: Path, finished: tuple[dict, GainResult], bootstrap: int,
                 bootstrap_seed: int, quiet: bool = False) -> tuple["ComparisonRow", GainResult]:
    """The row of a target finished by an earlier run, its intervals drawn now if asked for
    (``quiet``: without the line saying so, unless its file had to be brought up to date)."""
    data, result = finished
    result = _with_intervals(result, bootstrap, bootstrap_seed)
    # Every derived value (gains, verdicts) again from the stored sums with today's rules:
    # a file written by an older funnel_tl, or edited by hand, is brought up to date.
    fresh = result.to_dict()
    updated = fresh != data  # new intervals asked for, or derived values that disagreed
    if updated:
        try:
            result.save(path)
        except OSError as error:
            tqdm.write(f"{target.label}: could not update {path} ({describe_os_error(error)}); "
                       "its row is recomputed all the same", file=sys.stderr)
        data = fresh
    if updated or not quiet:
        tqdm.write(f"{target.label}: finished earlier, read from {path}"
                   + (" (derived values and verdicts recomputed from its sums)" if updated else ""), file=sys.stderr)
    return row_from_results(target, data, result, resumed=True), result


def _measured_row(target: "Target", prompt_list: list[str], path: Path, options: dict,
                  quiet: bool = False) -> tuple["ComparisonRow", GainResult | None]:
    """Load, measure and save one target; a failure becomes its row, and the sweep goes on."""
    try:
        data, result = _measure_one(target, prompt_list, path, **options)
        row = row_from_results(target, data, result, resumed=False)
    except Exception as error:  # one failing model must not end the sweep
        row, result = ComparisonRow(model=target.label, slug=target.slug, status="failed", base=target.base,
                                    step=target.step, revision=target.revision, error=one_line(error)), None
        if not quiet:
            tqdm.write(f"{target.label}: FAILED: {row.error}", file=sys.stderr)
    # Only the message is kept: the exception's traceback holds the model's frame, and it is
    # gone once the except block ends, so the model is freed here even when it failed.
    _release_memory()
    return row, result


def assign_targets(pending: Sequence[int], n_ranks: int, rank: int) -> list[int]:
    """The pending targets (indices in sweep order) one rank measures: every ``n_ranks``-th from ``rank``.

    Only targets not yet finished (as rank 0 reads ``out``) are dealt, so a rerun with any number
    of ranks recomputes nothing finished; every rank computes the same deal from the same list.

    >>> assign_targets([0, 2, 3, 5, 6], 2, 1)
    [2, 5]
    """
    return list(pending[rank::n_ranks])


def _sweep_sharded(targets: list["Target"], prompt_list: list[str], out: Path, settings: dict, group,
                   *, force: bool, options: dict, self_contained: bool = False) -> "Comparison | None":
    """The sweep over torchrun's ranks: each pending target measured by exactly one rank, each rank
    loading only its own; rank 0 then reads every result from the shared ``out`` and writes the
    table and page. Returns the ``Comparison`` on rank 0, ``None`` on the others.

    Rank 0 holds ``out``'s lock for the whole sweep (the other ranks are part of it and write only
    their targets' folders); if it cannot take it, every rank stops with its error."""
    from contextlib import ExitStack

    from .distributed import broadcast_from_main, gather_to_main, together

    paths = [out / target.slug / "results.json" for target in targets]
    with ExitStack() as held:
        pending, earlier = None, []
        with together(group):
            if not group.main:
                check_output_folder(out)
            else:  # one reader decides, so ranks on nodes with stale filesystem caches still agree
                held.enter_context(claim_output(out))
                earlier = earlier_rows(out, settings)  # a table of other settings stops every rank here
                pending = [i for i, (target, path) in enumerate(zip(targets, paths))
                           if force or _finished(path, target, settings, say_replaced=True) is None]
        # Every rank waits here for rank 0's list, so no result is written before it was read.
        pending = broadcast_from_main(group, pending)
        mine = assign_targets(pending, group.size, group.rank)
        options = dict(options, extra_provenance={"rank": group.rank, "world_size": group.size})
        quiet = dict(options, progress=False) if not group.main else options
        measured = {}
        shown = group.main and options["progress"] is not False and len(mine) > 1
        with _collecting_per_target():
            for index in tqdm(mine, desc=f"models (rank 0's share of {len(pending)})", unit="model",
                              disable=not shown):
                remove_temporaries(paths[index].parent)
                row, _ = _measured_row(targets[index], prompt_list, paths[index], quiet, quiet=not group.main)
                measured[index] = row
        gathered = gather_to_main(group, measured)  # rows are small; the results are on the shared disk
        if not group.main:
            return None
        fresh = {index: row for part in gathered for index, row in part.items()}
        rows: list[ComparisonRow] = []
        results: dict[str, GainResult] = {}
        for index, (target, path) in enumerate(zip(targets, paths)):
            if index in fresh:
                row = fresh[index]
                if row.ok:
                    results[target.label] = GainResult.load(path)
                else:
                    tqdm.write(f"{target.label}: FAILED: {row.error}", file=sys.stderr)
            else:
                finished = _finished(path, target, settings)
                if finished is None:  # removed or replaced since the deal
                    row = ComparisonRow(model=target.label, slug=target.slug, status="failed", base=target.base,
                                        step=target.step, revision=target.revision,
                                        error=f"{path} changed during the sweep: rerun to measure it")
                else:
                    row, results[target.label] = _resumed_row(target, path, finished, options["bootstrap"],
                                                              options["bootstrap_seed"])
            rows.append(row)
        rows, results = _kept(earlier, targets, rows, results, out, settings, options)
        return _finish(rows, results, dict(settings, world_size=group.size), out, self_contained)


def _finished(path: Path, target: Target, settings: dict, *, say_replaced: bool = False
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
    differences = _differences(data, result, target, settings)
    if differences and say_replaced:
        had, asks = zip(*differences)
        tqdm.write(f"{target.label}: replacing {path} (measured with {', '.join(had)}; "
                   f"this sweep asks {', '.join(asks)})", file=sys.stderr)
    return None if differences else (data, result)


def _differences(data: dict, result: GainResult, target: Target, settings: dict) -> list[tuple[str, str]]:
    """``(as the file has it, as the sweep asks)`` for each setting in which a results file differs.

    Every setting that changes a number counts: the model and its revision, the definition, the
    prompts, ``drop_first``, the dtype, the truncation, the layers and the position sums. A file
    written by ``run`` records its truncation only in ``provenance["truncation"]`` (the limit in
    tokens, where ``compare`` also keeps the request, ``"context"`` or a number): either counts.
    """
    provenance = data.get("provenance", {})
    truncated = provenance.get("truncation") or {}
    asked_truncation = (provenance["max_tokens_per_prompt"] if "max_tokens_per_prompt" in provenance
                        else truncated.get("max_tokens_per_prompt"))
    pairs = [("model", result.model, target.label), ("revision", provenance.get("revision"), target.revision),
             ("definition", result.definition, settings["definition"]),
             ("prompts sha256", data.get("prompts", {}).get("sha256"), settings["prompts_sha256"]),
             ("drop_first", result.drop_first, settings["drop_first"]),
             ("dtype", provenance.get("dtype"), settings["dtype"]),
             ("max_tokens_per_prompt", asked_truncation, settings.get("max_tokens_per_prompt"))]
    shown = {"prompts sha256": lambda value: str(value)[:12]}
    differences = [(f"{name}={shown.get(name, str)(had)}", f"{name}={shown.get(name, str)(asks)}")
                   for name, had, asks in pairs if had != asks]
    # A file with position sums serves a sweep that does not ask for them; not the other way.
    if result.positions is None and settings.get("by_position", False):
        differences.append(("no by-position sums", "by_position"))
    if not result.all_layers:  # a `run --layers` subset written there: a sweep compares every layer
        differences.append((f"layers={result.layer_spans}", "every layer"))
    return differences


def _measure_one(target: Target, prompts: list[str], path: Path, *, device: str, dtype: str,
                 definition: str, batch_size: int, drop_first: int, bootstrap: int,
                 bootstrap_seed: int, progress: bool | None, by_position: bool = False, max_tokens_per_prompt=None,
                 device_map=None, max_memory=None, keep_texts: bool = True,
                 extra_provenance: dict | None = None) -> tuple[dict, GainResult]:
    """Load, measure, save one target; return its results file as written and read back."""
    _reset_peak_memory(device)
    start = time.perf_counter()
    placement = {"device_map": device_map, "max_memory": max_memory} if device_map is not None else {}
    model = load_model(target.source, device=device, dtype=dtype, revision=target.revision, **placement)
    loaded = time.perf_counter()
    if target.step is not None:
        model.funnel_name = target.label  # the results file names the checkpoint, not only the model
    n_parameters = count_parameters(model)
    check_bootstrap(bootstrap, len(prompts), model.cfg.n_layers)  # before the measurement, not after
    # One short prompt through the same path, untimed: the first pass of a process or of a model on a
    # GPU pays one-time costs (kernel selection, cuBLAS handles, allocator growth) that would
    # otherwise land in whichever model happens to be measured first.
    measure_gains(model, [WARM_UP_PROMPT], definition=definition, batch_size=1, progress=False,
                  max_tokens_per_prompt="context")  # a model with a tiny context reads what fits
    measuring = time.perf_counter()
    result = measure_gains(model, prompts, definition=definition, batch_size=batch_size, drop_first=drop_first,
                           progress=progress, by_position=by_position, max_tokens_per_prompt=max_tokens_per_prompt,
                           keep_texts=keep_texts)
    measured = time.perf_counter()
    del model
    peak, kind = _peak_memory(device)
    result.provenance.update({
        "n_parameters": int(n_parameters), "revision": target.revision, "step": target.step,
        "seconds": round(measured - start, 3), "load_seconds": round(loaded - start, 3),
        "measure_seconds": round(measured - measuring, 3), "peak_memory_bytes": peak, "memory_kind": kind,
    })
    if max_tokens_per_prompt is not None:  # as asked ("context" or a number), for the resume check
        result.provenance["max_tokens_per_prompt"] = max_tokens_per_prompt
    result.provenance.update(extra_provenance or {})
    result = _with_intervals(result, bootstrap, bootstrap_seed)
    try:
        result.save(path)
    except OSError as error:  # the measurement is kept, where it fits
        place = save_elsewhere(result.save, "results.json")
        kept = f"saved to {place} instead" if place else "nothing could be saved"
        raise FunnelError(f"measured, but {path} could not be written ({describe_os_error(error)}); {kept}") from None
    data = read_json(path)
    return data, GainResult.from_dict(data, source=str(path))


def count_parameters(model) -> int:
    """The checkpoint's own parameter count, each tensor once (tied embeddings count once).

    Not ``model.parameters()``: a bridge holds both the HF model's fused QKV weights and the split
    copies TransformerLens makes of them, inside the HF modules it wraps (nano-2l: 387,200
    instead of the checkpoint's 362,240). The HF architecture is instead rebuilt from the model's
    own config on the meta device (no memory, no weights read) and its parameters counted; a
    model without an HF config (a ``HookedTransformer``) counts its own parameters by storage.
    """
    config = getattr(getattr(model, "original_model", None), "config", None)
    if config is not None:
        from transformers import AutoModelForCausalLM

        try:
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config)
            return sum(p.numel() for p in skeleton.parameters())  # parameters() yields a tied tensor once
        except (ValueError, KeyError, TypeError, RuntimeError):
            pass  # an architecture transformers cannot rebuild from its config: count by storage below
    seen, total = set(), 0
    for parameter in model.parameters():
        key = (parameter.data_ptr(), parameter.numel())
        if key not in seen:
            seen.add(key)
            total += parameter.numel()
    return total


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


def _release_memory() -> None:
    """Free what the last model left, reference cycles included, before the next loads.

    Inside ``_collecting_per_target`` this costs what the last model allocated, not what the
    process holds: every object alive after a collection is frozen (``gc.freeze``), so the next
    full collection only visits what came after. A full collection of a process holding torch,
    transformers and TransformerLens took 0.2 s every time, longer than loading and measuring a
    small checkpoint.
    """
    gc.collect()
    gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _collecting_per_target():
    """For a sweep's loop over targets: ``_release_memory`` collects only each target's objects;
    on the way out every object frozen meanwhile is handed back to the collector (unless the
    caller had frozen objects of its own: then they all stay so, as it chose)."""
    had_frozen = gc.get_freeze_count() > 0
    try:
        yield
    finally:
        if not had_frozen:
            gc.unfreeze()


# Linux can reset a process's peak resident set size (VmHWM) by writing 5 to clear_refs, which
# makes the CPU peak per model; elsewhere the process-wide peak is what there is.
def _reset_peak_memory(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_memory(device: str) -> tuple[int, str]:
    if str(device).startswith("cuda"):
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    try:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024, "rss_peak"
    except OSError:
        pass
    try:
        import resource  # Unix only; reached only where /proc is missing (macOS)
    except ImportError:
        return 0, "unknown"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024), "process_rss_peak"


def _gains_at(pairs: Sequence[tuple[float, int]]) -> list[str]:
    """``(gain, layer)`` pairs as ``"0.309 L1 "``-style cells of one width: gains right-aligned,
    layers left-aligned, so the numbers line up and so do the layer labels.

    >>> _gains_at([(0.309, 1), (1234.5, 10)])
    ['   0.309 L1 ', '1234.500 L10']
    """
    gains = [f"{gain:.3f}" for gain, _ in pairs]
    layers = [str(layer) for _, layer in pairs]
    gain_width, layer_width = max(map(len, gains), default=0), max(map(len, layers), default=0)
    return [f"{gain:>{gain_width}} L{layer:<{layer_width}}" for gain, layer in zip(gains, layers)]


def _compare_dict(rows: Sequence[ComparisonRow], settings: dict) -> dict[str, Any]:
    return {
        "schema_version": COMPARE_SCHEMA_VERSION,
        "kind": "funnel_tl.compare",
        **settings,
        "n_models": len(rows),
        "n_failed": sum(not row.ok for row in rows),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": [row.to_dict() for row in rows],
    }


# ---- the result ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Comparison:
    """A finished sweep: one ``ComparisonRow`` per target, and the ``GainResult`` of each that ran.

    ``rows`` keep the sweep's order (models as given, checkpoints by step); ``results`` maps a
    row's ``model`` label to its ``GainResult`` for every row whose status is ``"ok"``.

    >>> sweep = Comparison.load("runs/compare")  # doctest: +SKIP
    >>> [row.model for row in sweep.failed]  # doctest: +SKIP
    []
    """

    rows: tuple[ComparisonRow, ...]
    results: dict[str, GainResult] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None

    def __post_init__(self):
        object.__setattr__(self, "rows", tuple(self.rows))
        labels = [row.model for row in self.rows]
        if len(set(labels)) != len(labels):
            raise ValueError("every row of a comparison needs its own model label")
        missing = [row.model for row in self.rows if row.ok and row.model not in self.results]
        if missing:
            raise ValueError(f"rows marked ok have no results: {missing}")

    def __repr__(self) -> str:  # every row and result would flood a notebook cell
        labels = [row.model for row in self.rows]
        shown = ", ".join(repr(label) for label in labels[:4]) + (", …" if len(labels) > 4 else "")
        return (f"Comparison({len(self.rows)} models: [{shown}], failed={len(self.failed)}, "
                f"definition={self.settings.get('definition')!r}, out={str(self.out) if self.out else None!r})")

    @property
    def ok(self) -> list[ComparisonRow]:
        return [row for row in self.rows if row.ok]

    @property
    def failed(self) -> list[ComparisonRow]:
        return [row for row in self.rows if not row.ok]

    def row(self, model: str) -> ComparisonRow:
        for row in self.rows:
            if row.model == model:
                return row
        raise KeyError(model)

    def to_dict(self) -> dict[str, Any]:
        return _compare_dict(self.rows, self.settings)

    # ---- figures -----------------------------------------------------------------------------
    def figure(self) -> "go.Figure":  # noqa: F821
        """Attention, MLP and block gains of every model on normalized depth, overlaid."""
        from .compare_plots import plot_depth_overlay

        return plot_depth_overlay(self)

    def heatmap(self, component: str = "mlp") -> "go.Figure":  # noqa: F821
        """Models × normalized depth, coloured by gain on a log scale (blue contracts, red expands)."""
        from .compare_plots import plot_depth_heatmap

        return plot_depth_heatmap(self, component)

    def training_figure(self, base: str | None = None) -> "go.Figure":  # noqa: F821
        """Per-layer attention and MLP gains against training step: one row of panels per model
        swept over checkpoints, or ``base``'s alone."""
        from .compare_plots import plot_training

        return plot_training(self, base)

    @property
    def checkpoint_models(self) -> list[str]:
        """Models with at least two measured checkpoints (those a training figure can show)."""
        counts: dict[str, int] = {}
        for row in self.ok:
            if row.step is not None:
                counts[row.base] = counts.get(row.base, 0) + 1
        return [base for base, count in counts.items() if count >= 2]

    def to_pandas(self):
        """Every measured model's gains as one tidy table (pandas, imported here).

        One row per model, layer and component: the columns of ``GainResult.to_pandas`` (model,
        layer, component, gain, ci_low, ci_high, n_prompts) plus ``step`` (the training step of a
        checkpoint: pandas' nullable ``Int64``, ``<NA>`` for a plain model) and ``depth``
        (layer / (n_layers - 1)).

        >>> sweep.to_pandas().query("component == 'mlp'").pivot(index="depth", columns="model", values="gain")  # doctest: +SKIP
        >>> sweep.to_pandas()["step"].dtype  # doctest: +SKIP
        Int64Dtype()
        """
        from .results import gain_rows, require_pandas

        pd = require_pandas()
        rows = []
        for row in self.ok:
            result = self.results[row.model]
            for line in gain_rows(result):
                line["model"] = row.model  # the sweep's label (names the checkpoint)
                line["step"] = row.step
                line["depth"] = line["layer"] / max(result.n_layers - 1, 1)
                rows.append(line)
        frame = pd.DataFrame(rows, columns=["model", "step", "layer", "depth", "component", "gain", "ci_low",
                                            "ci_high", "n_prompts"])
        return frame.astype({"step": "Int64"})  # integers, <NA> for a plain model (not floats with NaN)

    def format_table(self) -> str:
        """The verdict table as plain text, for the terminal.

        Columns are as wide as their widest cell, so a gain of 1000 or more (or a layer 100) does
        not push the later columns out of line.
        """
        from .compare_plots import format_seconds

        titles = ("model", "layers", "funnel", "robust", "attn min", "mlp max", "last mlp", "comb max", "measure")
        ok = [row for row in self.rows if row.ok]
        columns = {
            "layers": [str(row.n_layers) for row in ok],
            "funnel": [str(row.funnel_confirmed) for row in ok],
            "robust": ["–" if row.robust_funnel_confirmed is None else str(row.robust_funnel_confirmed) for row in ok],
            "attn min": _gains_at([(row.attn_min_gain, row.attn_min_layer) for row in ok]),
            "mlp max": _gains_at([(row.mlp_max_gain, row.mlp_max_layer) for row in ok]),
            "last mlp": [f"{row.last_layer_mlp_gain:.3f}" for row in ok],
            "comb max": _gains_at([(row.combined_max_gain, row.combined_max_layer) for row in ok]),
            "measure": [format_seconds(row.measure_seconds) for row in ok],
        }
        widths = {title: max([len(title), *map(len, cells)]) for title, cells in columns.items()}
        header = "  ".join([f"{'model':<34}", *(f"{title:>{widths[title]}}" for title in titles[1:])])
        lines = [header, "-" * len(header)]
        cells = iter(zip(*columns.values()))
        for row in self.rows:
            name = row.model if len(row.model) <= 34 else "…" + row.model[-33:]
            if not row.ok:
                lines.append(f"{name:<34} FAILED: {row.error}")
                continue
            lines.append("  ".join([f"{name:<34}", *(f"{cell:>{widths[title]}}"
                                                     for title, cell in zip(titles[1:], next(cells)))]))
        return "\n".join(lines)

    # ---- files -------------------------------------------------------------------------------
    def save(self, out: str | os.PathLike, self_contained: bool = False) -> tuple[Path, Path]:
        """Write ``compare.json`` and ``compare.html`` into ``out``, each atomically.

        The page loads ``out/plotly.min.js`` (written once, shared with the pages that ``funnel-tl
        report`` writes below ``out``); ``self_contained=True`` embeds plotly.js instead.
        """
        out = Path(out)
        json_path = write_json_atomic(out / "compare.json", self.to_dict())
        return json_path, self.save_html(out, self_contained)

    def save_html(self, out: str | os.PathLike, self_contained: bool = False,
                  root: str | os.PathLike | None = None) -> Path:
        """Write only ``compare.html`` into ``out`` (what ``funnel-tl report`` redraws); its
        ``plotly.min.js`` is shared from ``root`` (the top of an output tree) when given."""
        from .compare_plots import render_html
        from .plots import write_page

        return write_page(Path(out) / "compare.html", lambda plotlyjs: render_html(self, plotlyjs=plotlyjs),
                          self_contained, root)

    @classmethod
    def load(cls, out: str | os.PathLike, loaded: dict[Path, GainResult] | None = None) -> "Comparison":
        """Read a sweep back from ``out/compare.json`` and the results files beside it; ``loaded``:
        results already read, by resolved path, which are not read again."""
        out = Path(out)
        loaded = loaded or {}
        data = read_compare_json(out / "compare.json")
        rows = tuple(ComparisonRow.from_dict(row) for row in data["models"])
        paths = {row.model: (out / row.slug / "results.json").resolve() for row in rows if row.ok}
        results = {model: loaded.get(path) or GainResult.load(path) for model, path in paths.items()}
        settings = {key: data[key] for key in ("definition", "n_prompts", "prompts_sha256", "drop_first", "dtype",
                                               "device", "batch_size", "bootstrap", "bootstrap_seed", "by_position",
                                               "max_tokens_per_prompt", "world_size") if key in data}
        return cls(rows=rows, results=results, settings=settings, out=out)


__all__ = [
    "assign_targets", "Comparison", "ComparisonRow", "PRESETS", "PYTHIA_STEPS", "PYTHIA_SUITE", "Target", "compare",
    "checkpoint_targets", "expand_models", "local_checkpoints", "parse_steps", "plan_targets",
]
