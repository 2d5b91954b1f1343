"""The commands behind ``funnel-tl``: run, heads, compare, effects, report."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Literal, overload

from funnel_tl.cli.output import (
    IMAGES_HINT,
    check_png,
    compare_images,
    effects_images,
    head_images,
    print_positions,
    render,
    save_files,
)
from funnel_tl.errors import FunnelError
from funnel_tl.measure.interventions import DEFAULT_INTERVENTIONS, parse_interventions
from funnel_tl.results.folders import claim_output, short_name, slug


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


def measure_options(args, **fixed):
    """The ``MeasureOptions`` of run, heads and effects, built (and so checked) once from the flags;
    ``fixed``: what a command sets itself (effects takes no --by-position)."""
    # Imported on use: the options import neither torch nor numpy, but keep `--help` to argparse.
    from funnel_tl.measure.options import MeasureOptions

    return MeasureOptions(
        **{
            "definition": args.definition,
            "batch_size": args.batch_size,
            "drop_first": args.drop_first,
            "max_tokens_per_prompt": args.max_tokens_per_prompt,
            "keep_texts": args.keep_texts,
            "label": args.label,
            "layers": args.layers,
            "by_position": getattr(args, "by_position", False),
            **fixed,
        }
    )


def command_provenance(args, source: dict, result) -> dict:
    """What the command knows beside the measurement: where the prompts came from, and the hub
    revision asked for where the loaded model recorded none (a hub revision names no file;
    recorded, so a sweep can tell it apart)."""
    asked = args.revision is not None and "revision" not in result.provenance
    return {"prompt_source": source, **({"revision": args.revision} if asked else {})}


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
    from funnel_tl.models.loading import load_model, local_n_layers
    from funnel_tl.plots.effects import write_effects_page
    from funnel_tl.results.provenance import with_provenance

    # Each option's value was checked as it was parsed; what needs two of them, before anything loads.
    interventions = tuple(name for group in (args.interventions or [DEFAULT_INTERVENTIONS]) for name in group)
    parse_interventions(interventions)  # the same one given twice across the words
    options = measure_options(args, by_position=False)
    _check_model(args)
    check_png(args)
    current = world()
    loading = placement(args, current)
    prompts, source = read_cli_prompts(args)
    n_layers = local_n_layers(args.model, args.revision)
    if n_layers is not None:
        check_bootstrap(args.bootstrap, None, len(options.chosen_layers(n_layers)))
    settings = dict(interventions=interventions, stack=args.stack)
    with contextlib.ExitStack() as held:
        with together(current):
            out = _claim_output(held, args.out or _default_out(args), current)
            model = load_model(args.model, device=args.device, dtype=args.dtype, revision=args.revision, **loading)
            options.chosen_layers(model.cfg.n_layers)  # hub models: their depth is known only now
        if current.distributed:  # each rank measures its share; rank 0 gets the whole result
            result = measure_effects_on_ranks(model, prompts, current, options, **settings)
        else:
            result = measure_effects(
                model, prompts, checkpoint=out / "effects.json", resume=not args.force, options=options, **settings
            )
        del model
        if result is None:
            return 0  # rank 0 alone prints and writes
        result = with_provenance(result, **command_provenance(args, source, result))
        if args.bootstrap and result.n_prompts >= 2:
            result = result.with_intervals(n_resamples=args.bootstrap, seed=args.bootstrap_seed, method=args.intervals)
        writers: list[tuple[str, Callable[[Path], object]]] = [
            ("effects.json", result.save),
            ("effects.html", lambda path: write_effects_page(result, path, self_contained=args.self_contained)),
        ]
        if args.png:
            writers.append(("effects.png", lambda path: [effects_images(result, out)]))
        lines, failure = save_files(out, writers, rescue=result.save)
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


def cmd_run(args) -> int:
    # Imported on use: keeps torch out of `funnel-tl --help`.
    from funnel_tl.analysis.report import format_analysis
    from funnel_tl.analysis.stats import check_bootstrap
    from funnel_tl.measure.distributed import world
    from funnel_tl.measure.gains import measure_gains
    from funnel_tl.models.loading import local_n_layers

    # Everything cheap first (each option's value was checked as it was parsed): a typo must not
    # cost a model load, and a folder that cannot be written must not cost a measurement.
    options = measure_options(args)
    _check_model(args)
    check_png(args)
    current = world()
    prompts, source = read_cli_prompts(args, stream=not current.distributed)
    n_layers = local_n_layers(args.model, args.revision)  # bundled and local folders: from config.json

    def check_layers(depth: int) -> None:
        """--layers against the model's depth: in range, every layer for --by-position, and the
        bootstrap sized for the layers measured."""
        check_bootstrap(args.bootstrap, None, len(options.chosen_layers(depth, flag="--by-position")))

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
            options,
            after_load=after_load if n_layers is None else None,
        )
        if result is None:
            return 0  # rank 0 alone prints and writes
        if result.positions is not None:
            result = replace(result, positions=replace(result.positions, sink_positions=args.sink_positions))
        if args.bootstrap and result.n_prompts >= 2:
            result = result.with_intervals(n_resamples=args.bootstrap, seed=args.bootstrap_seed, method=args.intervals)
        # Files before the terminal: `funnel-tl run | head -1` must not cost funnel.html.
        lines, failure = save_files(
            out,
            [
                ("results.json", result.save),
                ("funnel.html", lambda path: render(result, out, self_contained=args.self_contained, images=args.png)),
            ],
            rescue=result.save,
            report_hint=True,
        )
    for line in prompt_notes(result, source):
        print(line)
    print(format_analysis(result))
    print_positions(result)
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


def _load_and_measure(
    held: contextlib.ExitStack, args, current, prompts, source, measurement, options, after_load=None
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
    from funnel_tl.results.provenance import with_provenance

    loading = placement(args, current)
    with together(current):
        out = _claim_output(held, args.out or _default_out(args), current)
        model = load_model(args.model, device=args.device, dtype=args.dtype, revision=args.revision, **loading)
        if after_load is not None:
            after_load(model)
    result = measure(measurement, model, prompts, current, options=options)
    del model  # before the files are written and the figures drawn
    if not current.main:
        return out, None
    return out, with_provenance(result, **command_provenance(args, source, result))


def cmd_heads(args) -> int:
    # Imported on use: keeps torch out of `funnel-tl --help`.
    from funnel_tl.measure.distributed import world
    from funnel_tl.measure.heads import head_gains
    from funnel_tl.results.provenance import with_provenance

    options = measure_options(args)  # every flag checked as parsed, the options once, before a model loads
    _check_model(args)
    check_png(args)
    current = world()
    prompts, source = read_cli_prompts(args, stream=not current.distributed)
    with contextlib.ExitStack() as held:
        out, result = _load_and_measure(held, args, current, prompts, source, head_gains, options)
        if result is None:
            return 0  # rank 0 alone prints and writes
        result = with_provenance(result, top=args.top)  # so that `report` redraws heads.html with the same table
        writers: list[tuple[str, Callable[[Path], object]]] = [
            ("heads.json", result.save),
            ("heads.html", lambda path: result.save_html(path, k=args.top, self_contained=args.self_contained)),
        ]
        if args.png:
            writers.append(("heads.png", lambda path: [head_images(result, args.top, out)]))
        lines, failure = save_files(out, writers, rescue=result.save, report_hint=True)
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

    check_png(args)
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
        print(compare_images(comparison))
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
