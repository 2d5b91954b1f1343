"""The sweep's table: one row per target, compare.json written as it goes and read back to resume."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from funnel_tl.analysis.funnel import funnel_test, summarize
from funnel_tl.analysis.stats import robust_funnel_test
from funnel_tl.errors import FunnelError
from funnel_tl.errors import one_line as plain_one_line
from funnel_tl.results.files import read_json, write_json_atomic
from funnel_tl.results.folders import describe_os_error
from funnel_tl.results.gains import GainResult
from funnel_tl.results.schema import check_compare
from funnel_tl.sweep.plan import model_identity

if TYPE_CHECKING:
    from funnel_tl.sweep.plan import Target


COMPARE_SCHEMA_VERSION = 1


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
    def from_dict(cls, data: dict[str, Any]) -> ComparisonRow:
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
        model=target.label,
        slug=target.slug,
        status="ok",
        base=target.base,
        step=target.step,
        revision=target.revision,
        resumed=resumed,
        n_layers=result.n_layers,
        hidden_dim=result.d_model,
        n_parameters=provenance.get("n_parameters"),
        parallel_blocks=result.parallel_blocks,
        funnel_confirmed=bool(funnel_test(result).funnel_confirmed),
        robust_funnel_confirmed=robust_funnel_test(result).funnel_confirmed if result.intervals is not None else None,
        has_intervals=result.intervals is not None,
        attn_contracting=attn.n_contracting,
        mlp_contracting=mlp.n_contracting,
        attn_min_gain=attn.min_gain,
        attn_min_layer=attn.min_layer,
        attn_max_gain=attn.max_gain,
        attn_max_layer=attn.max_layer,
        mlp_min_gain=mlp.min_gain,
        mlp_min_layer=mlp.min_layer,
        mlp_max_gain=mlp.max_gain,
        mlp_max_layer=mlp.max_layer,
        last_layer_mlp_gain=float(result.mlp_gains[-1]),
        combined_max_gain=combined.max_gain,
        combined_max_layer=combined.max_layer,
        seconds=provenance.get("seconds"),
        load_seconds=provenance.get("load_seconds"),
        measure_seconds=provenance.get("measure_seconds"),
        peak_memory_bytes=provenance.get("peak_memory_bytes"),
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


# compare.json is rewritten during a sweep when this long has passed since the last write, and at
# its end: after every row, a sweep of 1,232 small checkpoints wrote the growing table 1,232 times.
TABLE_WRITE_SECONDS = 10.0
TABLE_WRITE_SHARE = 50  # ... or this many times the last write's own time, whichever is longer


class TableWriter:
    """``compare.json`` while a sweep runs: the earlier table's rows, each replaced as this sweep
    finishes it, written when ``TABLE_WRITE_SECONDS`` (or 50 times the last write's own time)
    have passed — so its cost is a bounded share of the sweep, however many rows."""

    def __init__(self, out: Path, settings: dict, earlier: Sequence[ComparisonRow]):
        self.path, self.settings = out / "compare.json", settings
        self.rows = {row.model: row for row in earlier}
        self.spelled = {row_identity(row): row.model for row in earlier}  # see _kept
        self.due = -math.inf

    def put(self, row: ComparisonRow) -> None:
        earlier = self.spelled.get(row.model)
        if earlier is not None and earlier != row.model:  # the same model under its older spelling
            self.rows.pop(earlier, None)
        self.rows[row.model] = row
        if time.monotonic() >= self.due:
            self.write()

    def write(self) -> None:
        start = time.monotonic()
        try:
            write_json_atomic(self.path, compare_dict(ordered_rows(self.rows.values()), self.settings))
        except OSError as error:
            tqdm.write(f"could not write {self.path} ({describe_os_error(error)}); going on", file=sys.stderr)
        now = time.monotonic()
        self.due = now + max(TABLE_WRITE_SECONDS, TABLE_WRITE_SHARE * (now - start))


def ordered_rows(rows: Iterable[ComparisonRow]) -> list[ComparisonRow]:
    """A table's rows in order: each model where it first appears, its checkpoints by step as
    numbers (step2 before step1000), a plain model before its checkpoints.

    >>> rows = [ComparisonRow(f"m@step{s}", "x", "ok", base="m", step=s) for s in (1000, 2)]
    >>> [row.step for row in ordered_rows(rows + [ComparisonRow("other", "o", "ok", base="other")])]
    [2, 1000, None]
    """
    blocks: dict[str, list[ComparisonRow]] = {}
    for row in rows:
        blocks.setdefault(row.base or row.model, []).append(row)
    return [
        row for block in blocks.values() for row in sorted(block, key=lambda row: (row.step is not None, row.step or 0))
    ]


# Settings that change a number: a table holds rows measured one way only.
TABLE_SETTINGS = ("definition", "prompts_sha256", "drop_first", "dtype", "max_tokens_per_prompt")


def read_compare_json(path: Path) -> dict[str, Any]:
    """``compare.json`` read and checked to be a funnel_tl table of this schema (``schema.check_compare``)."""
    data = check_compare(read_json(path), ComparisonRow, COMPARE_SCHEMA_VERSION, str(path))
    if data.get("kind") != "funnel_tl.compare" or data.get("schema_version") != COMPARE_SCHEMA_VERSION:
        raise FunnelError(
            f"{path} is not a funnel_tl compare file of schema {COMPARE_SCHEMA_VERSION}: rerun `funnel-tl compare`"
        )
    return data


def earlier_rows(out: Path, settings: dict) -> list[ComparisonRow]:
    """The rows of the table already in ``out`` (none when there is none), which a sweep into
    ``out`` adds to and never drops; a table measured with other settings is refused in one line,
    before any model loads (one folder, one table: its rows must compare)."""
    path = out / "compare.json"
    if not path.is_file():
        return []
    data = read_compare_json(path)
    rows = [ComparisonRow.from_dict(row) for row in data.get("models", [])]
    if any(row.ok for row in rows):
        differ = [
            (f"{key}={data.get(key)}", f"{key}={settings.get(key)}")
            for key in TABLE_SETTINGS
            if data.get(key) != settings.get(key)
        ]
        if differ:
            had, asks = zip(*differ, strict=True)
            raise FunnelError(
                f"{path} is a table of {len(rows)} rows measured with {', '.join(had)}; this sweep asks "
                f"{', '.join(asks)}: give another --out (one folder holds one table), or remove "
                "that compare.json to start its table again"
            )
    return rows


def row_identity(row: ComparisonRow) -> str:
    """The label a row's model has today: ``model_identity`` of its name, and its step."""
    suffix = f"@step{row.step}"
    if row.step is not None and row.model.endswith(suffix):
        return model_identity(row.model[: -len(suffix)]) + suffix
    return model_identity(row.model)


def setting_differences(data: dict, result: GainResult, target: Target, settings: dict) -> list[tuple[str, str]]:
    """``(as the file has it, as the sweep asks)`` for each setting in which a results file differs.

    Every setting that changes a number counts: the model and its revision, the definition, the
    prompts, ``drop_first``, the dtype, the truncation, the layers and the position sums. A file
    written by ``run`` records its truncation only in ``provenance["truncation"]`` (the limit in
    tokens, where ``compare`` also keeps the request, ``"context"`` or a number): either counts.
    """
    provenance = data.get("provenance", {})
    truncated = provenance.get("truncation") or {}
    asked_truncation = (
        provenance["max_tokens_per_prompt"]
        if "max_tokens_per_prompt" in provenance
        else truncated.get("max_tokens_per_prompt")
    )
    pairs = [
        ("model", result.model, target.label),
        ("revision", provenance.get("revision"), target.revision),
        ("definition", result.definition, settings["definition"]),
        ("prompts sha256", data.get("prompts", {}).get("sha256"), settings["prompts_sha256"]),
        ("drop_first", result.drop_first, settings["drop_first"]),
        ("dtype", provenance.get("dtype"), settings["dtype"]),
        ("max_tokens_per_prompt", asked_truncation, settings.get("max_tokens_per_prompt")),
    ]
    shown = {"prompts sha256": lambda value: str(value)[:12]}
    differences = [
        (f"{name}={shown.get(name, str)(had)}", f"{name}={shown.get(name, str)(asks)}")
        for name, had, asks in pairs
        if had != asks
    ]
    # A file with position sums serves a sweep that does not ask for them; not the other way.
    if result.positions is None and settings.get("by_position", False):
        differences.append(("no by-position sums", "by_position"))
    if not result.all_layers:  # a `run --layers` subset written there: a sweep compares every layer
        differences.append((f"layers={result.layer_spans}", "every layer"))
    return differences


def compare_dict(rows: Sequence[ComparisonRow], settings: dict) -> dict[str, Any]:
    return {
        "schema_version": COMPARE_SCHEMA_VERSION,
        "kind": "funnel_tl.compare",
        **settings,
        "n_models": len(rows),
        "n_failed": sum(not row.ok for row in rows),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "models": [row.to_dict() for row in rows],
    }
