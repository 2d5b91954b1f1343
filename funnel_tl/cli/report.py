"""``funnel-tl report DIR``: every results file below DIR read back, printed and its pages redrawn."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from funnel_tl.cli.output import (
    IMAGES_HINT,
    TOP_HEADS,
    check_png,
    compare_images,
    effects_images,
    head_images,
    print_positions,
    render,
)
from funnel_tl.errors import FunnelError


def find_results(folder: Path, name: str = "results.json") -> list[Path]:
    """folder/NAME and every NAME below it (compare writes one results.json per model), shallowest
    first, numbers in names in numeric order (``step2`` before ``step1000``)."""
    if not folder.is_dir():
        raise FunnelError(f"folder not found: {folder} (give a folder written by funnel-tl run, heads or compare)")

    def key(path: Path):
        parts = re.split(r"(\d+)", str(path))
        return len(path.relative_to(folder).parts), [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]

    return sorted(folder.rglob(name), key=key)


def cmd_report(args) -> int:
    # Imported on use: keeps torch out of `funnel-tl --help`.
    from funnel_tl.analysis.report import format_analysis
    from funnel_tl.results.gains import GainResult
    from funnel_tl.results.heads import HeadResult
    from funnel_tl.sweep.comparison import Comparison

    check_png(args)
    root = Path(args.dir)
    paths, head_paths = find_results(root), find_results(root, "heads.json")
    effect_paths = find_results(root, "effects.json")
    if not paths and not head_paths and not effect_paths:
        raise FunnelError(
            f"no results.json, heads.json or effects.json in {root} or below it: "
            f"run `funnel-tl run --out {root}` (or `funnel-tl heads`, `funnel-tl effects`) first"
        )
    results = [GainResult.load(path) for path in paths]  # all read before any is written: fail fast
    heads = [HeadResult.load(path) for path in head_paths]
    loaded = {
        path.resolve(): result for path, result in zip(paths, results, strict=True)
    }  # a sweep's models are among them
    sweeps = [Comparison.load(path.parent, loaded) for path in find_results(root, "compare.json")]  # DIR's and below

    def redraw(result):
        if args.bootstrap == 0:
            positions = result.positions and replace(result.positions, intervals=None)
            return replace(result, intervals=None, positions=positions)
        if args.bootstrap is not None or args.intervals is not None:
            current = result.intervals
            return result.with_intervals(
                n_resamples=args.bootstrap or (current.n_resamples if current is not None else 2000),
                seed=args.bootstrap_seed,
                method=args.intervals or "t",
            )
        return result

    redrawn = {}
    for path, result in zip(paths, results, strict=True):
        result = redrawn[path.resolve()] = redraw(result)
        print(format_analysis(result))
        print_positions(result)
        print(f"\nFrom: {path}")
        # Every page of the tree loads one DIR/plotly.min.js, unless --self-contained.
        render(result, path.parent, say=print, self_contained=args.self_contained, root=root, images=args.png)
        print()
    for path, head in zip(head_paths, heads, strict=True):  # the table as long as its run drew it, unless --top says
        top = args.top or int(head.provenance.get("top", TOP_HEADS))
        page = head.save_html(path.with_suffix(".html"), k=top, self_contained=args.self_contained)
        print(head.format_top(top))  # the table `funnel-tl heads` printed
        print(f"\nFrom: {path}\nSaved: {page}")
        if args.png:
            print(head_images(head, top, path.parent))
        print()
    _report_effects(effect_paths, args, root)
    for sweep in sweeps:  # each model as redrawn above: its intervals are not drawn a second time
        out = sweep.out
        assert out is not None  # Comparison.load gives it its folder
        sweep = replace(
            sweep,
            results={row.model: redrawn[(out / row.slug / "results.json").resolve()] for row in sweep.rows if row.ok},
        )
        page = sweep.save_html(out, self_contained=args.self_contained, root=root)
        print(f"Saved: {page}")
        if args.png:
            print(compare_images(sweep))
    if not args.png:
        print(IMAGES_HINT)
    return 0


def _report_effects(paths: list[Path], args, root: Path) -> None:
    """report: every effects.json's reading printed and its effects.html redrawn (intervals as
    --bootstrap and --intervals say), with its images under --png."""
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.analysis.effects import format_effects
    from funnel_tl.plots.effects import write_effects_page
    from funnel_tl.results.effects import EffectResult

    for path, result in [(path, EffectResult.load(path)) for path in paths]:  # all read before any is written
        if args.bootstrap == 0:
            result = replace(result, intervals=None)
        elif (args.bootstrap is not None or args.intervals is not None) and result.n_prompts >= 2:
            current = result.intervals
            result = result.with_intervals(
                n_resamples=args.bootstrap or (current.n_resamples if current is not None else 2000),
                seed=args.bootstrap_seed,
                method=args.intervals or "t",
            )
        print(format_effects(result))
        page = write_effects_page(result, path.with_suffix(".html"), self_contained=args.self_contained, root=root)
        print(f"\nFrom: {path}\nSaved: {page}")
        if args.png:
            print(effects_images(result, path.parent))
        print()
