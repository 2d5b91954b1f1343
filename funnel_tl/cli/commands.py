"""The commands behind ``funnel-tl``: run, heads, compare, effects, report."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Literal, overload

from funnel_tl.errors import FunnelError, one_line
from funnel_tl.measure.interventions import DEFAULT_INTERVENTIONS, parse_interventions
from funnel_tl.results.folders import claim_output, describe_os_error, save_elsewhere, short_name, slug

# Heads that `heads` prints and heads.html tabulates unless --top says otherwise.
TOP_HEADS = 20


@overload
def read_cli_prompts(args, stream: Literal[False] = False) -> tuple[list[str], dict]: ...
@overload
def read_cli_prompts(args, stream: bool) -> tuple[Iterable[str], dict]: ...
def read_cli_prompts(args, stream: bool = False) -> tuple[Iterable[str], dict]:
    """The prompts of --prompts or --dataset, capped at --max-prompts, and where they came from.

    ``stream``: an iterator read as the measurement goes (one process: memory flat in the corpus
    size, ``funnel_tl.measure.streaming``); else a list (torchrun's ranks deal the prompts out by tokens,
    so each reads the whole list).
    """
    # Imported on use: keeps numpy out of `funnel-tl --help`.
    from funnel_tl.prompts.sources import read_prompts, stream_prompts

    read = stream_prompts if stream else read_prompts
    return read(
        args.prompts, max_prompts=args.max_prompts, dataset=args.dataset, split=args.split, text_field=args.text_field
    )


def placement(args, current) -> dict:
    """load_model's keywords for --device-map/--max-memory; refused under torchrun's data parallel."""
    if args.device_map is None:
        return {}
    if current.distributed:
        raise FunnelError(
            "--device-map spreads one model over all the GPUs a process sees, so it cannot be "
            "combined with torchrun's one process per GPU: run one process, or leave out --device-map"
        )
    return {"device_map": args.device_map, "max_memory": args.max_memory}


def prompt_notes(result, source: dict) -> list[str]:
    """What --max-prompts and truncation did, said aloud (both are in the provenance as well)."""
    notes = []
    if source.get("more_available"):
        notes.append(
            f"Measured the first {source['n_prompts']} prompts of {source['source']} (--max-prompts; it holds more)"
        )
    cut = result.provenance.get("truncation")
    if cut and cut["n_truncated"]:
        notes.append(
            f"Truncated {cut['n_truncated']} of {result.n_prompts} prompts to {cut['max_tokens_per_prompt']} "
            f"tokens ({cut['tokens_dropped']} tokens dropped; listed in the provenance of the results file)"
        )
    return notes


def _claim_output(held: contextlib.ExitStack, out, current) -> Path:
    """Rank 0, the one writer, checks ``out`` and holds its lock until ``held`` closes; other ranks touch nothing."""
    if not current.main:
        return Path(out)
    return held.enter_context(claim_output(out))


def cmd_effects(args) -> int:
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.analysis.effects import format_effects
    from funnel_tl.analysis.stats import check_bootstrap
    from funnel_tl.measure.distributed import together, world
    from funnel_tl.measure.effects import measure_effects, measure_effects_on_ranks
    from funnel_tl.measure.layers import resolve_layers
    from funnel_tl.models.loading import load_model, local_n_layers
    from funnel_tl.plots.effects import write_effects_page

    # Each option's value was checked as it was parsed; what needs two of them, before anything loads.
    interventions = tuple(name for group in (args.interventions or [DEFAULT_INTERVENTIONS]) for name in group)
    parse_interventions(interventions)  # the same one given twice across the words
    _check_model(args)
    _check_png(args)
    current = world()
    loading = placement(args, current)
    prompts, source = read_cli_prompts(args)
    n_layers = local_n_layers(args.model, args.revision)
    if n_layers is not None:
        check_bootstrap(args.bootstrap, None, len(resolve_layers(args.layers, n_layers)))
    settings = dict(
        interventions=interventions,
        layers=args.layers,
        definition=args.definition,
        batch_size=args.batch_size,
        drop_first=args.drop_first,
        stack=args.stack,
        max_tokens_per_prompt=args.max_tokens_per_prompt,
        keep_texts=args.keep_texts,
        label=args.label,
    )
    with contextlib.ExitStack() as held:
        with together(current):
            out = _claim_output(held, args.out or _default_out(args), current)
            model = load_model(args.model, device=args.device, dtype=args.dtype, revision=args.revision, **loading)
            resolve_layers(args.layers, model.cfg.n_layers)  # hub models: their depth is known only now
        if current.distributed:  # each rank measures its share; rank 0 gets the whole result
            result = measure_effects_on_ranks(model, prompts, current, **settings)
        else:
            result = measure_effects(model, prompts, checkpoint=out / "effects.json", resume=not args.force, **settings)
        del model
        if result is None:
            return 0  # rank 0 alone prints and writes
        result.provenance["prompt_source"] = source
        if args.revision is not None:  # a hub revision names no file: recorded, as run records it
            result.provenance.setdefault("revision", args.revision)
        if args.bootstrap and result.n_prompts >= 2:
            result = result.with_intervals(n_resamples=args.bootstrap, seed=args.bootstrap_seed, method=args.intervals)
        writers = [
            ("effects.json", result.save),
            ("effects.html", lambda path: write_effects_page(result, path, self_contained=args.self_contained)),
        ]
        if args.png:
            writers.append(("effects.png", lambda path: [_effects_images(result, out)]))
        lines, failure = _save(out, writers, rescue=result.save)
    for line in prompt_notes(result, source):
        print(line)
    print(format_effects(result))
    if args.bootstrap and result.n_prompts < 2:
        print("Intervals skipped: intervals over prompts need at least 2 prompts")
    print()
    for line in lines:
        print(line)
    if failure:
        raise failure
    if not args.png:
        print(IMAGES_HINT)
    return 0


def _effects_images(result, folder: Path) -> str:
    """effects.html's figure as images (--png), beside it."""
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.plots.effects import plot_effects
    from funnel_tl.plots.pages import export_figures

    return _images_line(export_figures({"effects": plot_effects(result)}, folder))


def cmd_run(args) -> int:
    # Imported on use: keeps torch out of `funnel-tl --help`.
    from funnel_tl.analysis.report import format_analysis
    from funnel_tl.analysis.stats import check_bootstrap
    from funnel_tl.measure.distributed import world
    from funnel_tl.measure.gains import measure_gains
    from funnel_tl.measure.layers import resolve_layers
    from funnel_tl.models.loading import local_n_layers

    # Everything cheap first (each option's value was checked as it was parsed): a typo must not
    # cost a model load, and a folder that cannot be written must not cost a measurement.
    layers = args.layers
    _check_model(args)
    _check_png(args)
    current = world()
    prompts, source = read_cli_prompts(args, stream=not current.distributed)
    n_layers = local_n_layers(args.model, args.revision)  # bundled and local folders: from config.json

    def check_layers(depth: int) -> None:
        """--layers against the model's depth: in range, every layer for --by-position, and the
        bootstrap sized for the layers measured."""
        chosen = resolve_layers(layers, depth)
        if args.by_position and len(chosen) < depth:
            raise FunnelError(
                "--by-position needs every layer (its sink analysis gives the Funnel verdict): "
                "leave out --layers or --by-position"
            )
        check_bootstrap(args.bootstrap, None, len(chosen))

    if n_layers is not None:
        check_layers(n_layers)  # before the model loads

    def after_load(model):  # hub models: their depth is known only now, still before measuring
        check_layers(model.cfg.n_layers)

    with contextlib.ExitStack() as held:
        out, result = _load_and_measure(
            held,
            args,
            current,
            prompts,
            source,
            measure_gains,
            after_load=after_load if n_layers is None else None,
            layers=layers,
        )
        if result is None:
            return 0  # rank 0 alone prints and writes
        if result.positions is not None:
            result = replace(result, positions=replace(result.positions, sink_positions=args.sink_positions))
        if args.bootstrap and result.n_prompts >= 2:
            result = result.with_intervals(n_resamples=args.bootstrap, seed=args.bootstrap_seed, method=args.intervals)
        # Files before the terminal: `funnel-tl run | head -1` must not cost funnel.html.
        lines, failure = _save(
            out,
            [
                ("results.json", result.save),
                ("funnel.html", lambda path: _render(result, out, self_contained=args.self_contained, images=args.png)),
            ],
            rescue=result.save,
            report_hint=True,
        )
    for line in prompt_notes(result, source):
        print(line)
    print(format_analysis(result))
    _print_positions(result)
    if args.bootstrap and result.n_prompts < 2:
        print("Intervals skipped: a bootstrap over prompts needs at least 2 prompts")
    print()
    for line in lines:
        print(line)
    if failure:
        raise failure
    if not args.png:
        print(IMAGES_HINT)
    return 0


IMAGES_HINT = "Figures as PNG, SVG and PDF beside the pages: add --png"


def _check_png(args) -> None:
    """--png needs kaleido and Chrome: refused in one line before anything is loaded or measured."""
    if getattr(args, "png", False):
        # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
        from funnel_tl.plots.pages import require_images

        require_images()


def _print_positions(result) -> None:
    """After the seed's analysis, when positions were kept: does the verdict hang on the first ones?"""
    if result.positions is not None:
        # Imported on use: keeps einops and numpy out of `funnel-tl --help`.
        from funnel_tl.analysis.sink import format_sink_analysis

        print(format_sink_analysis(result))


def _check_model(args) -> None:
    """--model and --revision name something loadable, as far as can be told without loading it:
    a bundled name, a local folder (without --revision) or a bundled checkpoint; hub names pass."""
    # Imported on use: keeps torch out of `funnel-tl --help`.
    from funnel_tl.models.loading import resolve_model_revision

    resolve_model_revision(args.model, args.revision)


def _default_out(args) -> Path:
    """runs/<--label, or the model's short name> (never a path), known before the model loads."""
    # Imported on use: keeps torch out of `funnel-tl --help`.
    from funnel_tl.models.loading import bundled_models, resolve_model

    if getattr(args, "label", None):
        return Path("runs") / slug(args.label)
    name, _, _ = resolve_model(args.model)
    if args.revision is not None and name in bundled_models():
        name = f"{name}@{args.revision}"  # load_model's funnel_name for a bundled checkpoint
    return Path("runs") / slug(short_name(name))


def _save(out: Path, writers, rescue=None, report_hint: bool = False) -> tuple[list[str], FunnelError | None]:
    """Run ``writers`` (file name, write(path) -> path or lines) in order; stop at the first failure.

    Returns the "Saved:" lines and, if a write failed, a FunnelError naming what was saved, what
    was not and why. When the first file (the numbers) cannot be written, ``rescue(path)`` saves it
    to a fresh temporary folder instead, so a measurement is never lost to a full or read-only disk.
    """
    lines: list[str] = []
    for index, (name, write) in enumerate(writers):
        try:
            written = write(out / name)
        except Exception as error:
            if index == 0 and not isinstance(error, OSError):
                raise  # not the disk: the same data would fail anywhere (a bug, for the catch-all)
            why = describe_os_error(error) if isinstance(error, OSError) else unexpected(error)
            if index == 0:
                place = save_elsewhere(rescue, name) if rescue else None
                saved = f"saved to {place} instead" if place else "nothing could be saved"
                return lines, FunnelError(
                    f"measured, but {out / name} could not be written ({why}); {saved}: "
                    "free space or fix the folder's permissions"
                )
            done = ", ".join(line.split()[-1] for line in lines)
            hint = f"; `funnel-tl report {out}` redraws it" if report_hint else ""
            return lines, FunnelError(
                f"saved {done}, but {out / name} could not be written ({why}): free space or "
                f"fix the folder's permissions{hint}"
            )
        lines.extend(written if isinstance(written, list) else [f"Saved: {written}"])
    return lines, None


def _render(
    result, folder: Path, say=None, self_contained: bool = False, root: Path | None = None, images: bool = False
) -> list[str]:
    """Write folder/funnel.html (and positions.html when positions were kept); with ``images``
    (--png) every figure of them as PNG, SVG and PDF too.

    With ``say`` (report): each "Saved:" line goes to it; without, the lines are returned (run
    prints them after every file is written). Pages load a shared plotly.min.js from ``root``
    (default: their folder) unless ``self_contained``.
    """
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.plots.pages import export_figures, write_html
    from funnel_tl.plots.panels import plot_funnel

    figures = {"funnel": plot_funnel(result)}
    lines = [
        f"Saved: {write_html(figures['funnel'], folder / 'funnel.html', self_contained=self_contained, root=root)}"
    ]
    if result.positions is not None:
        # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
        from funnel_tl.plots.positions import position_figures, write_position_page

        page = write_position_page(result, folder / "positions.html", self_contained=self_contained, root=root)
        lines.append(f"Saved: {page}")
        figures |= position_figures(result)
    if images:
        lines.append(_images_line(export_figures(figures, folder)))
    for line in lines if say is not None else ():
        say(line)
    return lines


def _images_line(paths) -> str:
    """One "Saved:" line for the images of a page: folder/{funnel,positions-heatmaps}.{png,svg,pdf}."""
    paths = list(paths)
    if not paths:
        return "Saved: no figures"
    names = sorted({path.stem for path in paths}, key=[path.stem for path in paths].index)
    kinds = sorted({path.suffix.lstrip(".") for path in paths}, key=[path.suffix.lstrip(".") for path in paths].index)
    return f"Saved: {paths[0].parent}/{{{','.join(names)}}}.{{{','.join(kinds)}}}"


def _head_images(result, k: int, folder: Path) -> str:
    """heads.html's figures as images (--png)."""
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.plots.heads import head_figures
    from funnel_tl.plots.pages import export_figures

    return _images_line(export_figures(head_figures(result, k), folder))


def _compare_images(comparison) -> str:
    """compare.html's figures as images (--png), beside it."""
    # Imported on use: keeps plotly and torch out of `funnel-tl --help`.
    from funnel_tl.plots.compare_page import page_figures
    from funnel_tl.plots.pages import export_figures

    return _images_line(export_figures(page_figures(comparison), comparison.out))


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

    _check_png(args)
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
        _print_positions(result)
        print(f"\nFrom: {path}")
        # Every page of the tree loads one DIR/plotly.min.js, unless --self-contained.
        _render(result, path.parent, say=print, self_contained=args.self_contained, root=root, images=args.png)
        print()
    for path, head in zip(head_paths, heads, strict=True):  # the table as long as its run drew it, unless --top says
        top = args.top or int(head.provenance.get("top", TOP_HEADS))
        page = head.save_html(path.with_suffix(".html"), k=top, self_contained=args.self_contained)
        print(head.format_top(top))  # the table `funnel-tl heads` printed
        print(f"\nFrom: {path}\nSaved: {page}")
        if args.png:
            print(_head_images(head, top, path.parent))
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
            print(_compare_images(sweep))
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
            print(_effects_images(result, path.parent))
        print()


def _load_and_measure(
    held: contextlib.ExitStack, args, current, prompts, source, measurement, after_load=None, **options
):
    """The middle of ``run`` and ``heads``: claim the output folder, load the model, measure.

    Under torchrun every rank takes part: the folder, its lock (held in ``held``) and the load are
    one collective step, so a rank that cannot go on stops every rank; ``after_load(model)`` runs
    inside it. Returns ``(out, result)``; ``result`` is None on ranks other than 0, which print
    and write nothing.
    """
    # Imported on use: keeps torch out of `funnel-tl --help`.
    from funnel_tl.measure.distributed import measure, together
    from funnel_tl.models.loading import load_model

    loading = placement(args, current)
    with together(current):
        out = _claim_output(held, args.out or _default_out(args), current)
        model = load_model(args.model, device=args.device, dtype=args.dtype, revision=args.revision, **loading)
        if after_load is not None:
            after_load(model)
    result = measure(
        measurement,
        model,
        prompts,
        current,
        definition=args.definition,
        batch_size=args.batch_size,
        drop_first=args.drop_first,
        by_position=args.by_position,
        max_tokens_per_prompt=args.max_tokens_per_prompt,
        keep_texts=args.keep_texts,
        label=args.label,
        **options,
    )
    del model  # before the files are written and the figures drawn
    if not current.main:
        return out, None
    result.provenance["prompt_source"] = source
    if args.revision is not None:  # a hub revision names no file: recorded, so a sweep can tell it apart
        result.provenance.setdefault("revision", args.revision)
    return out, result


def cmd_heads(args) -> int:
    # Imported on use: keeps torch out of `funnel-tl --help`.
    from funnel_tl.measure.distributed import world
    from funnel_tl.measure.heads import head_gains

    layers = args.layers  # parsed and checked with the arguments, before a model is loaded
    _check_model(args)
    _check_png(args)
    current = world()
    prompts, source = read_cli_prompts(args, stream=not current.distributed)
    with contextlib.ExitStack() as held:
        out, result = _load_and_measure(held, args, current, prompts, source, head_gains, layers=layers)
        if result is None:
            return 0  # rank 0 alone prints and writes
        result.provenance["top"] = args.top  # so that `report` redraws heads.html with the same table
        writers = [
            ("heads.json", result.save),
            ("heads.html", lambda path: result.save_html(path, k=args.top, self_contained=args.self_contained)),
        ]
        if args.png:
            writers.append(("heads.png", lambda path: [_head_images(result, args.top, out)]))
        lines, failure = _save(out, writers, rescue=result.save, report_hint=True)
    for line in prompt_notes(result, source):
        print(line)
    print(result.format_top(args.top))
    print()
    for line in lines:
        print(line)
    if failure:
        raise failure
    return 0


def cmd_compare(args) -> int:
    # Imported on use: keeps torch out of `funnel-tl --help`.
    from funnel_tl.sweep.runner import compare

    _check_png(args)
    prompts, source = read_cli_prompts(args)
    # Not placement(): under torchrun each rank measures whole models, so --device-map is allowed
    # here: with one process per node, each model spreads over that node's GPUs.
    comparison = compare(
        args.models,
        prompts,
        definition=args.definition,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        drop_first=args.drop_first,
        out=args.out,
        force=args.force,
        checkpoints=args.checkpoints,
        bootstrap=args.bootstrap,
        bootstrap_seed=args.bootstrap_seed,
        self_contained=args.self_contained,
        by_position=args.by_position,
        max_tokens_per_prompt=args.max_tokens_per_prompt,
        device_map=args.device_map,
        max_memory=args.max_memory,
        keep_texts=args.keep_texts,
    )
    if comparison is None:
        return 0  # not rank 0: its models are written; rank 0 prints and writes the table
    if source.get("more_available"):
        print(f"Measured the first {source['n_prompts']} prompts of {source['source']} (--max-prompts; it holds more)")
    print(comparison.format_table())
    out = Path(args.out)
    print(f"\nSaved: {out / 'compare.json'}\n       {out / 'compare.html'}")
    if args.png and comparison.rows:
        print(_compare_images(comparison))
    if comparison.failed:
        print(
            f"funnel-tl: {len(comparison.failed)} of {len(comparison.rows)} models failed "
            f"(errors in {out / 'compare.json'}); rerun the same command to retry only those",
            file=sys.stderr,
        )
        return 2
    return 0


def attach_layer_specs(argv: list[str]) -> list[str]:
    """``--layers -2--1`` as ``--layers=-2--1``: argparse reads a value that starts with '-' and is
    not a plain negative number as an option, and stopped with "expected one argument".

    >>> attach_layer_specs(["heads", "--layers", "-2--1", "--top", "3"])
    ['heads', '--layers=-2--1', '--top', '3']
    """
    attached, tokens = [], iter(argv)
    for token in tokens:
        if token == "--layers":
            value = next(tokens, None)
            if value is not None and re.fullmatch(r"-[0-9,\s-]*", value):
                attached.append(f"--layers={value}")
                continue
            attached.extend([token] if value is None else [token, value])
            continue
        attached.append(token)
    return attached


def unexpected(error: Exception) -> str:
    """One line for an exception no check anticipated."""
    if isinstance(error, MemoryError):
        return "out of memory: use fewer prompts, a smaller --batch-size or --bootstrap, or a smaller model"
    if isinstance(error, OSError) and error.filename:
        return f"cannot use {error.filename}: {describe_os_error(error)}"
    return one_line(error)
