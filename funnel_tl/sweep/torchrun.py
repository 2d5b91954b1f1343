"""The sweep under torchrun: targets dealt over the ranks, rank 0 writes the table."""

from __future__ import annotations

import dataclasses
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm.auto import tqdm

from funnel_tl.measure.distributed import broadcast_from_main, gather_to_main, together
from funnel_tl.results.folders import check_output_folder, claim_output, remove_temporaries
from funnel_tl.results.gains import GainResult
from funnel_tl.sweep.comparison import finish_sweep, kept_rows
from funnel_tl.sweep.memory import collecting_per_target
from funnel_tl.sweep.one_target import SweepOptions, finished_result, measured_row, resumed_row
from funnel_tl.sweep.plan import assign_targets
from funnel_tl.sweep.rows import ComparisonRow, earlier_rows

if TYPE_CHECKING:
    from funnel_tl.sweep.comparison import Comparison
    from funnel_tl.sweep.plan import Target


def sweep_sharded(
    targets: list[Target],
    prompt_list: list[str],
    out: Path,
    settings: dict,
    group,
    *,
    force: bool,
    options: SweepOptions,
    self_contained: bool = False,
) -> Comparison | None:
    """The sweep over torchrun's ranks: each pending target measured by exactly one rank, each rank
    loading only its own; rank 0 then reads every result from the shared ``out`` and writes the
    table and page. Returns the ``Comparison`` on rank 0, ``None`` on the others.

    Rank 0 holds ``out``'s lock for the whole sweep (the other ranks are part of it and write only
    their targets' folders); if it cannot take it, every rank stops with its error."""

    paths = [out / target.slug / "results.json" for target in targets]
    with ExitStack() as held:
        pending, earlier = None, []
        with together(group):
            if not group.main:
                check_output_folder(out)
            else:  # one reader decides, so ranks on nodes with stale filesystem caches still agree
                held.enter_context(claim_output(out))
                earlier = earlier_rows(out, settings)  # a table of other settings stops every rank here
                pending = [
                    i
                    for i, (target, path) in enumerate(zip(targets, paths, strict=True))
                    if force or finished_result(path, target, settings, say_replaced=True) is None
                ]
        # Every rank waits here for rank 0's list, so no result is written before it was read.
        pending = broadcast_from_main(group, pending)
        mine = assign_targets(pending, group.size, group.rank)
        rank = {"rank": group.rank, "world_size": group.size}
        quiet = dataclasses.replace(options, progress=False) if not group.main else options
        measured = {}
        shown = group.main and options.progress is not False and len(mine) > 1
        with collecting_per_target():
            for index in tqdm(mine, desc=f"models (rank 0's share of {len(pending)})", unit="model", disable=not shown):
                remove_temporaries(paths[index].parent)
                row, _ = measured_row(
                    targets[index], prompt_list, paths[index], quiet, quiet=not group.main, extra_provenance=rank
                )
                measured[index] = row
        gathered = gather_to_main(group, measured)  # rows are small; the results are on the shared disk
        if not group.main:
            return None
        assert gathered is not None  # gather_to_main gives the main rank every part
        fresh = {index: row for part in gathered for index, row in part.items()}
        rows: list[ComparisonRow] = []
        results: dict[str, GainResult] = {}
        for index, (target, path) in enumerate(zip(targets, paths, strict=True)):
            if index in fresh:
                row = fresh[index]
                if row.ok:
                    results[target.label] = GainResult.load(path)
                else:
                    tqdm.write(f"{target.label}: FAILED: {row.error}", file=sys.stderr)
            else:
                finished = finished_result(path, target, settings)
                if finished is None:  # removed or replaced since the deal
                    row = ComparisonRow(
                        model=target.label,
                        slug=target.slug,
                        status="failed",
                        base=target.base,
                        step=target.step,
                        revision=target.revision,
                        error=f"{path} changed during the sweep: rerun to measure it",
                    )
                else:
                    row, results[target.label] = resumed_row(target, path, finished, options)
            rows.append(row)
        rows, results = kept_rows(earlier, targets, rows, results, out, settings, options)
        return finish_sweep(rows, results, dict(settings, world_size=group.size), out, self_contained)
