"""Fault injection, second round (issue #21): options and environment variables checked before
anything loads, files read back checked against their schema, lock files that are links,
prompts that are not valid Unicode, temporaries of every name, results that would hold NaN.

As in test_faults.py: each case goes through ``main(argv)`` as a user's command line would, and
``load_model`` is replaced by a function that fails the test wherever the error had to come first.
The walks over options and variables find them in the parser and in the source, so an option or
variable added without a check (or without a bad value here) fails them.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from funnel_tl import FunnelError, GainResult, HeadResult, load_prompts
from funnel_tl.cli.entry import build_parser, main
from funnel_tl.results.folders import LOCK_NAME, remove_temporaries

sweep_package = importlib.import_module("funnel_tl.sweep")
models_hub = importlib.import_module("funnel_tl.models.hub")
REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "funnel_tl"
ERROR_LINE = re.compile(r"funnel-tl( [a-z]+)?: error: ")


# ---- helpers -----------------------------------------------------------------------------------
def refused(capsys, argv: list[str], *needles: str) -> str:
    """``main(argv)`` exits 2 with one `error:` line on stderr holding every needle, nothing on
    stdout, and no catch-all: the line names the cause (a checked error, not "rerun with --debug")."""
    status = main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == 2, (argv, captured.err)
    assert len(lines) == 1 and ERROR_LINE.match(lines[0]), (argv, captured.err)
    assert (
        "Traceback" not in captured.err and "rerun with --debug" not in lines[0] and "AssertionError" not in lines[0]
    ), lines
    assert captured.out == "", (argv, captured.out)
    for needle in needles:
        assert needle in lines[0], (argv, lines[0])
    return lines[0]


# ---- 1. every option, every variable: checked before anything loads ---------------------------------
# Bad values of the options that take one, by option string ("DIR": report's folder). Options with
# choices get "bogus"; flags get "--flag=x". An option missing here fails the walk: give it a bad
# value, and the check that refuses it.
BAD_VALUES = {
    "--model": [["/nonexistent/model"]],
    "--revision": [["step5"]],  # nano-2l ships no checkpoints
    "--label": [["   "], ["two\nlines"]],
    "--prompts": [["{tmp}/missing.txt"]],
    "--batch-size": [["0"], ["many"]],
    "--drop-first": [["-1"]],
    "--max-prompts": [["0"]],
    "--max-tokens-per-prompt": [["0"], ["all"]],
    "--dataset": [["{tmp}/bad.jsonl"]],
    "--split": [["validation"]],  # without --dataset
    "--text-field": [["body"]],  # without --dataset
    "--max-memory": [["0=lots", "--device-map", "auto"], ["0=1GiB"]],
    "--layers": [["x"], ["3-1"]],
    "--out": [["{tmp}/afile"]],
    "--bootstrap": [["-1"], ["10000000"]],
    "--bootstrap-seed": [["-1"]],
    "--sink-positions": [["17"], ["2"]],  # 2 without --by-position
    "--top": [["0"]],
    "--models": [[""], ["nano-2l", " "]],  # a model that cannot load is a failed row of its own: the sweep goes on
    "--checkpoints": [["latest"]],
    "--interventions": [["shift"], ["scale:1"], ["zero", "zero"]],
    "--stack": [["0"], ["many"]],
    "DIR": [["{tmp}/no-such-folder"]],
}
# More bad uses of flags than "--flag=x": a combination refused before loading.
BAD_COMBINATIONS = {("run", "--by-position"): [["--by-position", "--layers", "0"]]}
BASE = {
    "run": ["--model", "nano-2l", "--device", "cpu", "--out", "{tmp}/out"],
    "heads": ["--model", "nano-2l", "--device", "cpu", "--out", "{tmp}/out"],
    "compare": ["--models", "nano-2l", "--device", "cpu", "--out", "{tmp}/out"],
    "effects": ["--model", "nano-2l", "--device", "cpu", "--out", "{tmp}/out"],
    "report": ["{tmp}/empty"],
}


def every_option():
    """``(command, option string, action)`` for every option of every subcommand and of funnel-tl itself."""
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices
    for command, sub in [(None, parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            yield command, (action.option_strings[0] if action.option_strings else action.metavar), action


def bad_argvs():
    cases = []
    for command, option, action in every_option():
        fragments = []
        if action.nargs == 0:  # a flag
            fragments.append([f"{option}=x"])
        elif action.choices:
            fragments.append([option, "bogus"])
        elif option in BAD_VALUES:
            fragments.extend(values if option == "DIR" else [option, *values] for values in BAD_VALUES[option])
        else:
            fragments.append(None)  # the walk fails on it
        fragments.extend(BAD_COMBINATIONS.get((command, option), []))
        for fragment in fragments:
            cases.append(
                pytest.param(command, option, fragment, id=f"{command or 'funnel-tl'} {' '.join(fragment or [option])}")
            )
    return cases


@pytest.mark.parametrize("command, option, fragment", bad_argvs())
def test_every_option_with_a_bad_value_is_one_line_before_loading(
    command, option, fragment, tmp_path, capsys, no_model
):
    assert fragment is not None, (
        f"{option} of {command or 'funnel-tl'} has no bad value in BAD_VALUES: add one, "
        "and the check that refuses it before anything loads"
    )
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n', encoding="utf-8")
    fill = lambda items: [item.replace("{tmp}", str(tmp_path)) for item in items]  # noqa: E731
    if command is None:
        argv = [*fill(fragment), "run", *fill(BASE["run"])]
    elif command == "report" and option == "DIR":
        argv = [command, *fill(fragment)]
    else:
        argv = [command, *fill(BASE[command]), *fill(fragment)]
    refused(capsys, argv)
    assert not (tmp_path / "out" / "results.json").exists()


BAD_ENVIRONMENT = {
    "FUNNEL_TL_TIMEOUT_MINUTES": ["soon", "0", "-5", "inf", "nan"],
    "FUNNEL_TL_CACHE": ["{tmp}/afile"],
}


def variables_in_the_source() -> set[str]:
    found = set()
    for path in PACKAGE.rglob("*.py"):
        found |= set(re.findall(r"\bFUNNEL_TL_[A-Z][A-Z0-9_]*\b", path.read_text(encoding="utf-8")))
    return found


def environment_cases():
    cases = [
        pytest.param(name, value, id=f"{name}={value}")
        for name in sorted(variables_in_the_source() | set(BAD_ENVIRONMENT))
        for value in BAD_ENVIRONMENT.get(name, [None])
    ]
    return cases + [pytest.param("FUNNEL_TL_TIMOUT_MINUTES", "60", id="misspelt name")]


@pytest.mark.parametrize("name, value", environment_cases())
@pytest.mark.parametrize("command", ["run", "compare", "report"])
def test_every_environment_variable_with_a_bad_value_is_one_line_before_loading(
    command, name, value, tmp_path, capsys, monkeypatch, no_model
):
    assert value is not None, f"{name} is read in funnel_tl's source but has no bad value in BAD_ENVIRONMENT: add one"
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(name, value.replace("{tmp}", str(tmp_path)))
    line = refused(capsys, [command, *[item.replace("{tmp}", str(tmp_path)) for item in BASE[command]]], name)
    if name in BAD_ENVIRONMENT:  # a known variable: its value is what is refused, not its name
        assert "unknown environment variable" not in line, line


def test_a_bad_timeout_under_torchrun_names_the_variable(monkeypatch):
    """torchrun's ranks read FUNNEL_TL_TIMEOUT_MINUTES as they join: a bad one was a bare ValueError."""
    from funnel_tl.measure.distributed import session

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("FUNNEL_TL_TIMEOUT_MINUTES", "ninety")
    with pytest.raises(FunnelError, match="FUNNEL_TL_TIMEOUT_MINUTES='ninety'"):
        with session("cpu"):
            pass


def test_a_negative_bootstrap_seed_is_refused_before_a_sweep(tmp_path, no_model):
    """The Python API: a seed numpy refuses would have failed every model after its measurement."""
    with pytest.raises(FunnelError, match="seed"):
        sweep_package.compare(["nano-2l"], "seed", device="cpu", out=tmp_path / "sweep", bootstrap_seed=-1)
    assert not (tmp_path / "sweep").exists()


CHILD = """
import runpy, sys
sys.argv = ["funnel-tl", *sys.argv[1:]]
try:
    runpy.run_module("funnel_tl", run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
heavy = sorted(name for name in ("torch", "transformer_lens", "transformers", "numpy") if name in sys.modules)
print("IMPORTED", code, ",".join(heavy), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv, status",
    [
        (["--help"], 0),
        (["--version"], 0),
        (["run", "--help"], 0),
        (["run", "--bootstrap-seed", "-1"], 2),
        (["bogus"], 2),
        (["compare", "--checkpoints", "latest", "--models", "x"], 2),
    ],
)
def test_help_version_and_argument_errors_import_no_torch(argv, status):
    """`python -m funnel_tl --help` answers before torch or TransformerLens is imported."""
    done = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, cwd=REPO, timeout=120)
    report = [line for line in done.stderr.splitlines() if line.startswith("IMPORTED")]
    assert report, done.stderr
    _, code, heavy = (report[-1].split(" ") + [""])[:3]
    assert int(code) == status, done.stderr
    assert heavy == "", f"{argv} imported {heavy}"


def test_every_public_name_imports_lazily():
    """The package imports its names on first use; each documented name still works, and the
    package's `compare` is the function (no module of that name shadows it: the sweep lives in
    `funnel_tl.sweep`), and subpackages are reached by attribute."""
    import funnel_tl

    for name in funnel_tl.__all__:
        assert getattr(funnel_tl, name) is not None, name
    from funnel_tl import compare

    assert callable(compare) and funnel_tl.compare is compare and compare.__module__ == "funnel_tl.sweep.runner"
    assert funnel_tl.sweep.compare is compare and funnel_tl.analysis.stats.Intervals is funnel_tl.Intervals
    with pytest.raises(AttributeError):
        _ = funnel_tl.no_such_name


# ---- 2. files read back: checked against their schema -------------------------------------------------
@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A results.json (with intervals and positions), a heads.json (with positions) and a sweep,
    measured on nano-2l once for the module."""
    root = tmp_path_factory.mktemp("measured")
    prompts = root / "three.txt"
    prompts.write_text(
        "The capital of France is Paris.\nWater is made of hydrogen and oxygen.\n"
        "The quick brown fox jumps over the lazy dog near the bank.\n",
        encoding="utf-8",
    )
    common = ["--model", "nano-2l", "--device", "cpu", "--prompts", str(prompts)]
    assert main(["run", *common, "--by-position", "--bootstrap", "50", "--out", str(root / "run")]) == 0
    assert main(["heads", *common, "--by-position", "--out", str(root / "heads")]) == 0
    assert (
        main(
            [
                "compare",
                "--models",
                "nano-2l",
                "--device",
                "cpu",
                "--prompts",
                str(prompts),
                "--bootstrap",
                "0",
                "--out",
                str(root / "sweep"),
            ]
        )
        == 0
    )
    return root


def damaged(source: Path, folder: Path, change) -> Path:
    """A copy of ``source``'s folder into ``folder`` with ``change(data)`` applied to the JSON file."""
    shutil.copytree(source.parent, folder)
    path = folder / source.name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def setter(*keys, value):
    def change(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


def remover(*keys):
    def change(data):
        for key in keys[:-1]:
            data = data[key]
        del data[keys[-1]]

    return change


RESULTS_DAMAGE = {
    "a number for the model": (setter("model", value=3), "model"),
    "a null provenance": (setter("provenance", value=None), "provenance"),
    "no per-prompt sums": (remover("per_prompt"), "per_prompt"),
    "a NaN sum": (setter("per_prompt", "mlp", "out_sum", 1, 0, value=float("nan")), "per_prompt.mlp.out_sum[1][0]"),
    "a string for a sum": (setter("per_prompt", "attn", "in_sum", 0, 1, value="1.5"), "per_prompt.attn.in_sum[0][1]"),
    "a ragged row": (setter("per_prompt", "block", "in_sum", 2, value=[1.0]), "per_prompt.block.in_sum[2]"),
    "a fractional token count": (setter("per_prompt", "n_tokens", 0, value=2.5), "per_prompt.n_tokens[0]"),
    "a null confidence": (setter("intervals", "confidence", value=None), "intervals.confidence"),
    "position edges as text": (setter("by_position", "edges", value="0-16"), "by_position.edges"),
    "an infinite position sum": (
        setter("by_position", "per_prompt", "attn", "out_sum", 0, 0, 0, value=float("inf")),
        "by_position.per_prompt.attn.out_sum[0][0][0]",
    ),
    "a prompt that is a number": (setter("prompts", "texts", 1, value=7), "prompts.texts[1]"),
    "truncation as text": (setter("provenance", "truncation", value="yes"), "provenance.truncation"),
    "layers as text": (setter("layers", value="0-1"), "layers"),
    "a root that is a list": (lambda data: data.clear(), "schema_version"),
}


HEADS_DAMAGE = {
    "a null model": (setter("model", value=None), "model"),
    "layers as a number": (setter("layers", value=1), "layers"),
    "a NaN head norm": (
        setter("per_prompt", "head_norm_sum", 0, 0, 0, value=float("nan")),
        "per_prompt.head_norm_sum[0][0][0]",
    ),
    "missing position sums": (remover("by_position", "per_prompt"), "by_position.per_prompt"),
    "top as text": (setter("provenance", "top", value="twenty"), "provenance.top"),
}


COMPARE_DAMAGE = {
    "a row without its slug": (remover("models", 0, "slug"), "models[0].slug"),
    "a gain as text": (setter("models", 0, "attn_min_gain", value="small"), "models[0].attn_min_gain"),
    "an unknown status": (setter("models", 0, "status", value="done"), "models[0].status"),
    "a failed row without its error": (setter("models", 0, "status", value="failed"), "models[0].error"),
    "models as an object": (setter("models", value={}), "models"),
    "a null definition": (setter("definition", value=None), "definition"),
}


DAMAGE = {"run/results.json": RESULTS_DAMAGE, "heads/heads.json": HEADS_DAMAGE, "sweep/compare.json": COMPARE_DAMAGE}


@pytest.mark.parametrize("file, case", [(file, case) for file, cases in DAMAGE.items() for case in sorted(cases)])
def test_report_of_a_damaged_file_names_the_file_and_the_field(file, case, measured, tmp_path, capsys):
    change, field = DAMAGE[file][case]
    source = measured / file
    path = damaged(source, tmp_path / source.parent.name, change)
    refused(capsys, ["report", str(path.parent)], str(path), field)


def test_a_sweep_resumes_past_a_damaged_results_file(measured, tmp_path, capsys):
    """A hand-edited results.json (null provenance) stopped a whole `compare` with AttributeError;
    now it is named, measured again and replaced."""
    sweep = tmp_path / "sweep"
    damaged(measured / "sweep" / "nano-2l" / "results.json", sweep / "nano-2l", setter("provenance", value=None))
    prompts = measured / "three.txt"
    assert (
        main(
            [
                "compare",
                "--models",
                "nano-2l",
                "--device",
                "cpu",
                "--prompts",
                str(prompts),
                "--bootstrap",
                "0",
                "--out",
                str(sweep),
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert "replacing" in err and "provenance must be a JSON object" in err, err
    assert isinstance(GainResult.load(sweep / "nano-2l" / "results.json").provenance, dict)


# ---- 3. lock files and writes stay in the output folder -------------------------------------------------
@pytest.mark.parametrize("planted", ["symlink", "hardlink", "fifo"])
def test_a_planted_lock_file_is_refused_and_its_target_untouched(planted, tmp_path, capsys, no_model):
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    lock = out / LOCK_NAME
    if planted == "symlink":
        lock.symlink_to(victim)
    elif planted == "hardlink":
        os.link(victim, lock)
    else:
        os.mkfifo(lock)  # opened plainly, it would block the run forever
    refused(capsys, ["run", "--model", "nano-2l", "--device", "cpu", "--out", str(out)], str(lock))
    assert victim.read_text() == "precious\n"


def test_temporaries_of_every_name_are_cleaned(tmp_path, two_prompts):
    """A killed run leaves temporaries of whatever it was writing (plotly.js, positions.html, ...):
    the next run removes them all, and only them."""
    from funnel_tl.results.folders import temporary_beside

    out = tmp_path / "run"
    out.mkdir()
    leftovers = [
        out / ".plotly.min.js.a1b2c3d4.tmp",
        out / ".positions.html.x9y8z7w6.tmp",
        out / ".results.json.k3.tmp",
    ]
    for name in ("effects.html", "plotly.min.js", "positions.html", "anything.json"):  # today's writers' names
        descriptor, temporary = temporary_beside(out / name)
        os.close(descriptor)
        leftovers.append(Path(temporary))
    for path in leftovers:
        path.write_text("half")
    keep = [out / ".notes.txt.tmp", out / "mine.funnel-tl.tmp.txt"]
    for path in keep:
        path.write_text("mine")
    assert (
        main(
            [
                "run",
                "--model",
                "nano-2l",
                "--device",
                "cpu",
                "--prompts",
                two_prompts,
                "--bootstrap",
                "0",
                "--by-position",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert [path.name for path in leftovers if path.exists()] == []
    assert all(path.exists() for path in keep)
    assert remove_temporaries(out) == []


# ---- 4. prompts and datasets ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content, where",
    [
        ("bad.json", '["fine", "a lone \\ud800 surrogate"]', "bad.json[1]"),
        ("bad.jsonl", '{"text": "fine"}\n\n{"text": "x \\udfff"}\n', "bad.jsonl:3"),
    ],
)
@pytest.mark.parametrize("command", ["run", "compare"])
def test_prompts_with_invalid_unicode_name_the_prompt(command, name, content, where, tmp_path, capsys, no_model):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    argv = (
        ["compare", "--models", "nano-2l", "--out", str(tmp_path / "o")]
        if command == "compare"
        else ["run", "--model", "nano-2l", "--out", str(tmp_path / "o")]
    )
    refused(capsys, [*argv, "--device", "cpu", "--prompts", str(path)], where, "invalid Unicode")


def test_python_prompts_with_invalid_unicode_name_the_index():
    with pytest.raises(FunnelError, match=r"prompt 1: the prompt holds invalid Unicode"):
        load_prompts(["fine", "bad " + chr(0xDC00)])


@pytest.mark.parametrize(
    "name, content, error",
    [
        ("bad.jsonl", '{"text": "fine"}\n{"text": broken\n', "JSON parse error"),
        ("bad.csv", 'text\n"an unclosed quote\n', "ParserError"),
        ("bad.parquet", "not parquet at all", "Parquet"),
        ("surrogate.jsonl", '{"text": "fine"}\n{"text": "x \\ud800"}\n', "surrogate"),
    ],
)
def test_a_malformed_dataset_file_is_one_line_naming_it(name, content, error, tmp_path, capsys, no_model):
    pytest.importorskip("datasets")
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    refused(
        capsys,
        ["run", "--model", "nano-2l", "--device", "cpu", "--dataset", str(path), "--out", str(tmp_path / "o")],
        name,
        error,
    )


def test_a_missing_dataset_file_is_not_asked_of_the_hub(tmp_path, capsys, no_model, monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setattr(models_hub, "unreachable_hub", lambda: pytest.fail("the hub was probed for a file name"))
    refused(
        capsys,
        [
            "run",
            "--model",
            "nano-2l",
            "--device",
            "cpu",
            "--dataset",
            str(tmp_path / "corpus.jsonl"),
            "--out",
            str(tmp_path / "o"),
        ],
        "dataset file not found",
    )


def test_a_vocabulary_smaller_than_the_tokenizer_is_one_line_before_the_forward(tmp_path, tokenizer, capsys):
    from funnel_tl.testing.toy import build_checkpoint

    folder = build_checkpoint(tmp_path / "small-vocab", "gpt2", tokenizer=tokenizer, vocab_size=64)
    capsys.readouterr()  # the build's own progress bars
    refused(
        capsys,
        ["run", "--model", str(folder), "--device", "cpu", "--bootstrap", "0", "--out", str(tmp_path / "o")],
        "vocabulary of 64",
        "token id",
    )
    assert not (tmp_path / "o" / "results.json").exists()


# ---- 5. results that would hold NaN, and sink positions past the prompts ------------------------------------
def test_an_empty_subset_is_refused(measured):
    result = GainResult.load(measured / "run" / "results.json")
    heads = HeadResult.load(measured / "heads" / "heads.json")
    for subject in (result, heads):
        with pytest.raises(FunnelError, match="at least one prompt"):
            subject.subset([])
        with pytest.raises(FunnelError, match="out of range"):
            subject.subset([0, 99])
    assert np.all(np.isfinite(result.subset([2, 0]).mlp_gains))


def test_no_result_of_no_prompts_is_built(measured):
    data = json.loads((measured / "run" / "results.json").read_text())
    empty = copy.deepcopy(data)
    empty["prompts"]["texts"] = []
    empty["per_prompt"] = {"n_tokens": [], **{c: {"out_sum": [], "in_sum": []} for c in ("attn", "mlp", "block")}}
    del empty["by_position"], empty["intervals"]
    with pytest.raises(FunnelError, match="at least one prompt"):
        GainResult.from_dict(empty)


def test_sink_positions_past_every_prompt_keep_the_measurement(tmp_path, capsys):
    """--sink-positions 16 on prompts of a few tokens measured, then failed while saving and kept
    nothing; now every file is written and the analysis says why there is nothing to compare."""
    prompts = tmp_path / "short.txt"
    prompts.write_text("Hi there.\nA b.\n", encoding="utf-8")
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--model",
                "nano-2l",
                "--device",
                "cpu",
                "--prompts",
                str(prompts),
                "--by-position",
                "--sink-positions",
                "16",
                "--bootstrap",
                "20",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "no prompt has a token after positions 0-15" in printed
    data = json.loads((out / "results.json").read_text())
    assert data["by_position"]["sink_positions"] == 16 and "sink" not in data["by_position"]
    assert (out / "positions.html").is_file() and (out / "funnel.html").is_file()
    assert main(["report", str(out)]) == 0  # and it reads back
