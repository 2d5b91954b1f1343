"""Fault injection: bad input and machine faults end in one stderr line and exit 2, never a
traceback, and nothing already measured is lost (issue #11, cases 1-10).

Each case goes through ``main(argv)`` as a user's command line would; a subprocess where the
process boundary is the point (a broken pipe, a second writer, ``kill -9``). Disk full and
read-only filesystems are real tmpfs mounts where the tests run as root, else a chmod'ed folder
or a skip with the reason. Where the model does not matter, ``load_model`` is replaced by a
function that fails the test: that proves a check ran before any model loaded.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from funnel_tl import FunnelError, GainResult, load_prompts
from funnel_tl.cli.entry import main
from funnel_tl.results.folders import LOCK_NAME, output_lock, remove_temporaries, slug

# The modules where each patched name is looked up (the package's `compare` is the function).
sweep_one_target = importlib.import_module("funnel_tl.sweep.one_target")
sweep_plan = importlib.import_module("funnel_tl.sweep.plan")
gains_module = importlib.import_module("funnel_tl.measure.gains")
models_loading = importlib.import_module("funnel_tl.models.loading")
models_hub = importlib.import_module("funnel_tl.models.hub")
sources_module = importlib.import_module("funnel_tl.prompts.sources")
REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "funnel_tl" / "models" / "bundled" / "nano-2l"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ---- helpers -----------------------------------------------------------------------------------
def one_line_error(capsys, *needles: str) -> str:
    """The captured stderr is exactly one `funnel-tl: error:` line (`funnel-tl run: error:` for a
    bad argument, from argparse) holding every needle."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert re.match(r"funnel-tl( [a-z]+)?: error: ", lines[0]) and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def mount(tmp_path):
    """``mount(options)``: a fresh tmpfs folder mounted with ``options`` (root only), unmounted after."""
    mounted = []

    def make(options: str) -> Path:
        if not IS_ROOT or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root")
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def measure_argv(command: str, *extra: str) -> list[str]:
    return [command, "--model", "nano-2l", "--device", "cpu", *extra]


# ---- 1. output problems are found before the model loads ------------------------------------
@pytest.mark.parametrize("command", ["run", "heads", "compare"])
def test_out_naming_a_file_is_refused_before_loading(command, tmp_path, capsys, no_model):
    target = tmp_path / "afile"
    target.write_text("not a folder")
    argv = (
        ["compare", "--models", "nano-2l", "--out", str(target)]
        if command == "compare"
        else measure_argv(command, "--out", str(target))
    )
    assert main(argv) == 2
    one_line_error(capsys, "is a file, not a folder")
    assert target.read_text() == "not a folder"


def test_read_only_output_is_refused_before_loading(tmp_path, capsys, no_model, mount):
    if IS_ROOT:
        folder = mount("ro,size=1m")  # root writes through any chmod: a read-only mount it is
        why = "read-only file system"
    else:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        why = "permission denied"
    for argv in (
        measure_argv("run", "--out", str(folder / "x")),
        measure_argv("heads", "--out", str(folder)),
        ["compare", "--models", "nano-2l", "--out", str(folder)],
    ):
        assert main(argv) == 2
        one_line_error(capsys, "cannot write to", why)


def test_full_disk_is_refused_before_loading(capsys, no_model, mount):
    folder = mount("size=256k")
    assert main(measure_argv("run", "--out", str(folder / "run"))) == 2
    one_line_error(capsys, "MiB free")
    assert main(["compare", "--models", "nano-2l", "--out", str(folder / "cmp")]) == 2
    one_line_error(capsys, "MiB free")


def filling_the_disk(measure, folder):
    """``measure``, after which a ballast file fills the disk of ``folder`` (ENOSPC from then on)."""

    def measure_then_fill(*args, **kwargs):
        result = measure(*args, **kwargs)
        with open(folder / "ballast", "wb", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 2**20)
            except OSError as error:
                assert error.errno == errno.ENOSPC
        return result

    return measure_then_fill


def test_disk_filling_during_the_run_keeps_the_measurement(capsys, mount, monkeypatch, two_prompts):
    """The disk fills while measuring: results.json goes to a rescue folder, and the line says where."""
    folder = mount("size=40m")  # passes the 32 MiB check, then a ballast file fills it
    monkeypatch.setattr(gains_module, "measure_gains", filling_the_disk(gains_module.measure_gains, folder))
    assert main(measure_argv("run", "--prompts", two_prompts, "--bootstrap", "0", "--out", str(folder / "run"))) == 2
    captured = capsys.readouterr()
    assert "nano-2l" in captured.out  # the analysis was printed all the same
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "disk full" in lines[0] and "saved to" in lines[0], captured.err
    rescued = Path(lines[0].split("saved to ")[1].split(" instead")[0])
    try:
        result = GainResult.load(rescued)
        assert result.n_prompts == 2 and result.model == "nano-2l"
        assert np.all(np.isfinite(result.attn_gains))
    finally:
        shutil.rmtree(rescued.parent, ignore_errors=True)


def test_figure_that_cannot_be_written_keeps_results_json(tmp_path, capsys, two_prompts):
    out = tmp_path / "run"
    (out / "funnel.html").mkdir(parents=True)  # a folder where the figure goes: its rename fails
    assert main(measure_argv("run", "--prompts", two_prompts, "--bootstrap", "0", "--out", str(out))) == 2
    line = one_line_error(capsys, "results.json", "funnel.html could not be written", "funnel-tl report")
    assert "saved" in line
    assert GainResult.load(out / "results.json").n_prompts == 2


def test_heads_json_is_written_before_heads_html(tmp_path, capsys, two_prompts):
    out = tmp_path / "heads"
    (out / "heads.html").mkdir(parents=True)
    assert main(measure_argv("heads", "--prompts", two_prompts, "--out", str(out))) == 2
    one_line_error(capsys, "heads.json", "heads.html could not be written")
    assert json.loads((out / "heads.json").read_text())["n_prompts"] == 2


def test_bootstrap_too_large_is_refused_before_loading(tmp_path, capsys, no_model, monkeypatch):
    assert main(measure_argv("run", "--bootstrap", "10000000", "--out", str(tmp_path / "a"))) == 2
    one_line_error(capsys, "--bootstrap 10000000")
    # Within the cap but not within memory: nano-2l's config says 2 layers, known before loading.
    import funnel_tl.analysis.stats as stats_module

    monkeypatch.setattr(stats_module, "available_memory", lambda: 64 * 2**20)
    assert main(measure_argv("run", "--bootstrap", "1000000", "--out", str(tmp_path / "b"))) == 2
    one_line_error(capsys, "GiB of memory")


def test_chunked_bootstrap_equals_one_draw():
    """Drawing the resamples chunk by chunk gives the intervals of one draw of them all."""
    from synthetic_results import funnel_like

    import funnel_tl.analysis.stats as stats_module

    result = funnel_like(n_layers=3, n_prompts=7)
    whole = stats_module.bootstrap_intervals(result, n_resamples=500, seed=3, method="percentile")
    whole_t = stats_module.bootstrap_intervals(result, n_resamples=500, seed=3)  # the products' studentized draws
    old = stats_module.CHUNK_FLOATS
    try:
        stats_module.CHUNK_FLOATS = 7 * 64  # 64 resamples a chunk: 8 chunks, the last one short
        chunked = stats_module.bootstrap_intervals(result, n_resamples=500, seed=3, method="percentile")
        chunked_t = stats_module.bootstrap_intervals(
            result, n_resamples=500, seed=3
        )  # 21 a chunk ([prompt, layer] each)
    finally:
        stats_module.CHUNK_FLOATS = old
    for component in ("combined", "cumulative"):
        np.testing.assert_allclose(chunked_t.of(component), whole_t.of(component), rtol=1e-12)  # as below
    # One draw, written out by hand from the same generator: the reference the chunks must equal.
    rng = np.random.default_rng(3)
    weights = rng.multinomial(7, np.full(7, 1 / 7), size=500) / 7
    attn = np.percentile(weights @ result.per_prompt_gains("attn"), [2.5, 97.5], axis=0).T
    for intervals in (whole, chunked):
        # The same draws; einsum and @ may sum the prompts in another order: last-bit differences.
        np.testing.assert_allclose(intervals.attn, attn, rtol=1e-12)
    for component in ("attn", "mlp", "block", "combined", "cumulative"):
        np.testing.assert_allclose(chunked.of(component), whole.of(component), rtol=1e-12)  # as above


# ---- 2. prompt files that cannot be read --------------------------------------------------------
PROMPT_FILES = {
    "binary.txt": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not valid UTF-8"),
    "latin1.txt": ("café au lait\n".encode("latin-1"), "not valid UTF-8"),
    "utf16.txt": ("a prompt\n".encode("utf-16"), "UTF-16"),
    "nul.txt": (b"a\x00b\n", "NUL byte"),
}


@pytest.mark.parametrize("name", sorted(PROMPT_FILES))
@pytest.mark.parametrize("command", ["run", "heads", "compare"])
def test_unreadable_prompt_files(command, name, tmp_path, capsys, no_model):
    content, needle = PROMPT_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    argv = (
        ["compare", "--models", "nano-2l", "--prompts", str(path), "--out", str(tmp_path / "o")]
        if command == "compare"
        else measure_argv(command, "--prompts", str(path), "--out", str(tmp_path / "o"))
    )
    assert main(argv) == 2
    one_line_error(capsys, needle, name)


@pytest.mark.skipif(IS_ROOT, reason="root reads a chmod 000 file; permission errors need a normal user")
def test_prompt_file_without_permission(tmp_path, capsys, no_model):
    path = tmp_path / "secret.txt"
    path.write_text("a prompt\n")
    path.chmod(0)
    assert main(measure_argv("run", "--prompts", str(path), "--out", str(tmp_path / "o"))) == 2
    one_line_error(capsys, "cannot read prompt file")


def test_report_on_a_binary_results_file(tmp_path, capsys):
    (tmp_path / "results.json").write_bytes(bytes(range(256)))
    assert main(["report", str(tmp_path)]) == 2
    one_line_error(capsys, "not UTF-8")


# ---- 3. corrupt weights ----------------------------------------------------------------------------
def copy_model(tmp_path, name="model", skip=()) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for file in BUNDLED.iterdir():
        if file.name not in skip:
            shutil.copy(file, folder / file.name)
    return folder


def test_truncated_safetensors(tmp_path, capsys):
    folder = copy_model(tmp_path)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)  # a download cut half way
    assert main(["run", "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "truncated", "model.safetensors")


def test_safetensors_with_a_bad_header(tmp_path, capsys):
    folder = copy_model(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64)
    assert main(["run", "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "not a readable safetensors file")


def test_config_json_with_a_wrong_type(tmp_path, capsys):
    """transformers validates config.json on load; a wrong type is the user's file, not a funnel_tl bug."""
    folder = copy_model(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": "x"}))
    assert main(["run", "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys, "config.json does not validate", "hidden_size", "expected int")
    assert "report it" not in line


def test_pickle_that_fails_weights_only(tmp_path, capsys):
    import argparse

    import torch
    from safetensors.torch import load_file

    folder = copy_model(tmp_path, skip=("model.safetensors",))
    state = load_file(BUNDLED / "model.safetensors")
    state["payload"] = argparse.Namespace(arbitrary="object")  # not a tensor: weights-only refuses it
    torch.save(state, folder / "pytorch_model.bin")
    assert main(["run", "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "weights-only")


# ---- 4. bad prompt data ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, kind",
    [("null", "null"), ("123", "a number"), ("[1, 2]", "a list"), ('{"a": 1}', "an object"), ('"   "', "whitespace")],
)
def test_jsonl_text_must_be_a_non_empty_string(value, kind, tmp_path, capsys, no_model):
    path = tmp_path / "p.jsonl"
    path.write_text('{"text": "fine"}\n' + f'{{"text": {value}}}\n', encoding="utf-8")
    assert main(measure_argv("run", "--prompts", str(path), "--out", str(tmp_path / "o"))) == 2
    one_line_error(capsys, f"{path}:2", kind)


def test_json_list_is_measured_as_its_items(tmp_path, capsys):
    strings, records = tmp_path / "strings.json", tmp_path / "records.json"
    strings.write_text('["The capital of France is Paris.", "Water boils at one hundred degrees."]')
    records.write_text('[{"text": "The capital of France is Paris."}, {"text": "Water boils at one hundred degrees."}]')
    assert (
        load_prompts(strings)
        == load_prompts(records)
        == ["The capital of France is Paris.", "Water boils at one hundred degrees."]
    )
    assert main(measure_argv("run", "--prompts", str(strings), "--bootstrap", "0", "--out", str(tmp_path / "o"))) == 0
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert saved["prompts"]["texts"] == ["The capital of France is Paris.", "Water boils at one hundred degrees."]


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"prompts": ["a"]}', "JSON dict"),
        ("[1, 2]", "a number"),
        ('["a", null]', "null"),
        ("[not json", "not valid JSON"),
    ],
)
def test_json_that_is_not_a_list_of_prompts(content, needle, tmp_path, no_model):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(FunnelError, match=needle):
        load_prompts(path)


def test_other_extensions_are_refused(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("a,b\n")
    with pytest.raises(FunnelError, match="cannot tell how to read a .csv file"):
        load_prompts(path)


def test_byte_order_mark_and_blank_prompts(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffFirst prompt\r\n   \n\tSecond prompt  \n".encode("utf-8"))
    assert load_prompts(path) == ["First prompt", "Second prompt"]
    with pytest.raises(FunnelError, match="only whitespace"):
        load_prompts(["a prompt", " \t "])
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(FunnelError, match="no prompts"):
        load_prompts(tmp_path / "blank.txt")


def test_python_prompts_are_checked_at_the_boundary(bridge):
    import torch

    model = bridge("gpt2")
    with pytest.raises(FunnelError, match="got a token tensor: pass the prompt texts"):
        gains_module.measure_gains(model, torch.tensor([[261, 262, 263]]))
    with pytest.raises(FunnelError, match=r"to measure one prompt, pass it in a list, \['The capital of France is'\]"):
        gains_module.measure_gains(model, "The capital of France is")
    with pytest.raises(FunnelError, match="prompt 1: a prompt must be a string, got a number"):
        gains_module.measure_gains(model, ["fine", 3])
    with pytest.raises(FunnelError, match="batch size must be an integer"):
        gains_module.measure_gains(model, ["fine"], batch_size=2.5)
    with pytest.raises(FunnelError, match="drop_first must be an integer"):
        gains_module.measure_gains(model, ["fine prompt"], drop_first=1.5)


# ---- 5, 6. incomplete model folders, revisions of local folders ----------------------------------
def test_model_folder_without_tokenizer(tmp_path, capsys):
    folder = copy_model(tmp_path, skip=("tokenizer.json", "tokenizer_config.json"))
    assert main(["run", "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys, "no tokenizer files")
    assert "empty after tokenization" not in line


def test_model_folder_without_weights(tmp_path, capsys):
    folder = copy_model(tmp_path, skip=("model.safetensors",))
    assert main(["run", "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "no weights")


def test_revision_of_a_local_folder_is_refused(tmp_path, capsys):
    folder = copy_model(tmp_path)
    assert main(["run", "--model", str(folder), "--revision", "step5", "--out", str(tmp_path / "o")]) == 2
    one_line_error(capsys, "--revision step5", "local folder")
    assert not (tmp_path / "o" / "results.json").exists()


def test_a_mistyped_shipped_name_is_refused_with_the_closest(tmp_path, capsys, monkeypatch):
    """nano8l or smollm2 is no hub name (a hub repo has an owner): refused offline, at once, with
    the shipped name it is closest to, never a minute of hub retries and a network error."""

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked about a mistyped shipped name")

    monkeypatch.setattr("funnel_tl.models.hub.unreachable_hub", no_hub)
    for typo, closest in (("nano8l", "nano-8l"), ("smollm2", "smollm2-135m"), ("SmolLM2-135M", "smollm2-135m")):
        assert main(["run", "--model", typo, "--out", str(tmp_path / "o")]) == 2
        one_line_error(capsys, f"no bundled model called {typo!r} (did you mean {closest}?)", "nano-2l")
    assert main(["run", "--model", "nano-9l", "--out", str(tmp_path / "o")]) == 2
    assert "did you mean" not in one_line_error(capsys, "no bundled model called 'nano-9l'")  # as near 2l as 8l


def test_an_unknown_option_is_named_by_its_command_with_the_closest(capsys):
    assert main(["run", "--modle", "nano-2l"]) == 2
    one_line_error(capsys, "funnel-tl run: error: unrecognized arguments: --modle nano-2l (did you mean --model?)")
    assert main(["compare", "--models", "nano-2l", "--bogus"]) == 2
    line = one_line_error(capsys, "funnel-tl compare: error: unrecognized arguments: --bogus", "compare --help")
    assert "did you mean" not in line  # nothing close: no guess


def test_compare_refuses_a_mistyped_model_before_measuring_any(tmp_path, capsys):
    assert main(["compare", "--models", "nano-2l", "nano-9l", "--out", str(tmp_path / "sweep")]) == 2
    one_line_error(capsys, "no bundled model called 'nano-9l'")
    assert not list(tmp_path.rglob("results.json"))  # nano-2l was not measured first
    missing = str(tmp_path / "no_such_model")
    assert main(["compare", "--models", "nano-2l", missing, "--out", str(tmp_path / "sweep")]) == 2
    one_line_error(capsys, f"model folder not found: {missing}")
    assert not list(tmp_path.rglob("results.json"))


def test_load_model_arguments_are_checked():
    with pytest.raises(FunnelError, match="unknown device 'bogus'"):
        models_loading.load_model("nano-2l", device="bogus")
    with pytest.raises(FunnelError, match="device must be a string"):
        models_loading.load_model("nano-2l", device=0.5)
    with pytest.raises(FunnelError, match="got int"):
        models_loading.load_model(123, device="cpu")
    with pytest.raises(FunnelError, match="dtype must be a string"):
        models_loading.load_model("nano-2l", device="cpu", dtype=32)


def test_hub_without_network_says_so_quickly(monkeypatch):
    """No network: the probe fails at once, and the line names the network and HF_HUB_OFFLINE=1."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(models_hub.socket, "create_connection", unreachable)
    monkeypatch.setattr(models_hub, "_PROBES", {})  # no earlier probe's answer
    start = time.perf_counter()
    with pytest.raises(FunnelError, match="HF_HUB_OFFLINE=1") as caught:
        models_loading.load_model("nobody-xyz/no-such-model-123", device="cpu")
    assert "cannot reach the model hub" in str(caught.value)
    assert time.perf_counter() - start < 30  # generous: HuggingFace's own retries took ~60 s


def test_hub_dataset_without_network_says_so_quickly(monkeypatch, tmp_path, capsys):
    """`--dataset org/name` with no network: one line, exit 2, before datasets' retries start; a local
    folder of data files still loads (it needs no hub)."""
    datasets = pytest.importorskip("datasets")
    import datasets.config  # noqa: F811  loads the submodule onto the datasets imported above

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)  # read from the environment at import

    def unreachable(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")

    monkeypatch.setattr(models_hub.socket, "create_connection", unreachable)
    monkeypatch.setattr(models_hub, "_PROBES", {})  # no earlier probe's answer
    real_load = datasets.load_dataset
    hub_loads = []

    def load_dataset(path, *args, **kwargs):
        if not Path(path).exists() and path not in sources_module.DATASET_BUILDERS.values():
            hub_loads.append(path)  # a real call would retry for ~26 s without a network
            raise OSError("Couldn't reach the Hub")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert (
        main(
            [
                "run",
                "--model",
                "nano-2l",
                "--dataset",
                "nobody-xyz/no-such-dataset",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert hub_loads == [] and err.count("\n") == 1, err
    assert "cannot reach the dataset hub" in err and "nobody-xyz/no-such-dataset" in err
    # Offline by datasets' own setting (HF_DATASETS_OFFLINE or HF_HUB_OFFLINE): no probe; datasets reads its cache.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    sources_module._check_hub("nobody-xyz/no-such-dataset")
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "part.jsonl").write_text('{"text": "alpha beta"}\n{"text": "gamma"}\n')
    assert sources_module.read_prompts(dataset=str(folder))[0] == ["alpha beta", "gamma"]


# ---- 7. output names never leave OUT -------------------------------------------------------------
def test_slugs_stay_inside_the_folder(tmp_path):
    names = [".", "..", "...", "/", "", "/etc/passwd", "../../x", "a/../../b", "~/model", "C:\\models\\x", "a" * 400]
    for name in names:
        folder = (tmp_path / slug(name)).resolve()
        assert folder.parent == tmp_path.resolve(), name
        assert len(slug(name)) <= 255
    named = [name for name in names if name.strip("/")]  # "" and "/" both name no model
    assert len({slug(name) for name in named}) == len(named)


def test_run_on_the_parent_folder_writes_inside_runs(tmp_path, capsys, monkeypatch, two_prompts):
    model = copy_model(tmp_path)
    work = model / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["run", "--model", "..", "--prompts", two_prompts, "--bootstrap", "0"]) == 0
    assert (work / "runs" / "__" / "results.json").is_file()
    assert not (model / "results.json").exists() and not (work / "results.json").exists()


def test_compare_targets_of_dot_names_stay_inside(tmp_path, monkeypatch):
    """`compare --models ..` (a model folder that is the parent) gets a folder inside OUT."""
    copy_model(tmp_path, name="parent")
    (tmp_path / "parent" / "inner").mkdir()
    monkeypatch.chdir(tmp_path / "parent" / "inner")
    out = tmp_path / "sweep"
    targets = sweep_plan.plan_targets([".."])
    assert [(out / t.slug).resolve().parent for t in targets] == [out.resolve()]


# ---- 8. a resumed sweep recomputes its verdicts ----------------------------------------------------
def test_resume_recomputes_verdicts_from_the_sums(tmp_path, capsys, monkeypatch, two_prompts):
    out = tmp_path / "sweep"
    argv = ["compare", "--models", "nano-2l", "--prompts", two_prompts, "--bootstrap", "200", "--out", str(out)]
    assert main(argv) == 0
    path = out / "nano-2l" / "results.json"
    honest = json.loads(path.read_text())
    verdict, robust = honest["funnel_test"]["funnel_confirmed"], honest["robust_funnel_test"]["funnel_confirmed"]
    edited = json.loads(path.read_text())
    edited["funnel_test"]["funnel_confirmed"] = not verdict  # a hand edit, or an older rule
    edited["robust_funnel_test"]["funnel_confirmed"] = not robust
    edited["mlp"]["max_gain"] = 1e9
    path.write_text(json.dumps(edited))

    def refuse(*args, **kwargs):
        raise AssertionError("a finished model was measured again")

    monkeypatch.setattr(sweep_one_target, "load_model", refuse)
    capsys.readouterr()
    assert main(argv) == 0
    row = json.loads((out / "compare.json").read_text())["models"][0]
    assert row["resumed"] and row["funnel_confirmed"] is verdict and row["robust_funnel_confirmed"] is robust
    rewritten = json.loads(path.read_text())
    assert rewritten["funnel_test"] == honest["funnel_test"] and rewritten["mlp"] == honest["mlp"]


# ---- 9. one writer per folder --------------------------------------------------------------------
LOCK_HOLDER = """
import sys, time
sys.path.insert(0, {repo!r})
from funnel_tl.results.folders import output_lock
with output_lock({out!r}):
    print("locked", flush=True)
    time.sleep(120)
"""

SLOW_COMPARE = """
import sys, time
sys.path.insert(0, {repo!r})
import importlib
def slow(*args, **kwargs):
    print("measuring", flush=True)
    time.sleep(120)
sweep_one_target = importlib.import_module("funnel_tl.sweep.one_target")
sweep_one_target.measure_gains = slow
from funnel_tl.cli import main
sys.exit(main(["compare", "--models", "nano-2l", "--prompts", {prompts!r}, "--bootstrap", "0", "--out", {out!r}]))
"""


def start(script: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def wait_for(process: subprocess.Popen, word: str) -> None:
    line = process.stdout.readline()
    assert word in line, (line, process.stderr.read() if process.poll() is not None else "")


def test_second_compare_is_refused_while_the_first_runs(tmp_path, capsys, two_prompts):
    """Two real compares into one OUT: the second gets one line and exit 2; after the first is
    killed (-9), its lock is taken over and its leftover temporary file removed."""
    out = tmp_path / "sweep"
    first = start(SLOW_COMPARE.format(repo=str(REPO), prompts=two_prompts, out=str(out)))
    try:
        wait_for(first, "measuring")  # the first holds the lock and is inside its measurement
        argv = ["compare", "--models", "nano-2l", "--prompts", two_prompts, "--bootstrap", "0", "--out", str(out)]
        assert main(argv) == 2
        one_line_error(capsys, "in use by another funnel-tl", f"pid {first.pid}")
        assert main(["run", "--model", "nano-2l", "--out", str(out)]) == 2  # run shares the lock
        one_line_error(capsys, "in use")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    leftover = out / ".compare.json.abc123.tmp"  # what a kill mid-write leaves
    leftover.write_text("{half")
    assert main(argv) == 0
    assert not leftover.exists()
    assert json.loads((out / "compare.json").read_text())["models"][0]["status"] == "ok"


def test_two_runs_into_one_folder(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = start(LOCK_HOLDER.format(repo=str(REPO), out=str(out)))
    try:
        wait_for(holder, "locked")
        assert main(measure_argv("run", "--out", str(out))) == 2
        one_line_error(capsys, "in use")
        assert main(measure_argv("heads", "--out", str(out))) == 2
        one_line_error(capsys, "in use")
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # the lock of the killed process is free again
        assert (out / LOCK_NAME).is_file()


def test_lock_in_one_process_refuses_a_second_holder(tmp_path):
    with output_lock(tmp_path):
        child = start(LOCK_HOLDER.format(repo=str(REPO), out=str(tmp_path)))
        _, err = child.communicate(timeout=60)
        assert child.returncode != 0 and "in use by another funnel-tl" in err


# ---- 10. smaller ones ---------------------------------------------------------------------------
def test_run_into_a_closed_pipe(tmp_path):
    out = tmp_path / "run"
    command = f"{sys.executable} -m funnel_tl.cli run --model nano-2l --bootstrap 0 --out {out} | head -1"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1
    assert (out / "results.json").is_file() and (out / "funnel.html").is_file()


def test_leftover_temporaries_are_cleaned(tmp_path, two_prompts):
    out = tmp_path / "run"
    out.mkdir()
    leftovers = [out / ".funnel.html.x1y2.tmp", out / ".results.json.k3.tmp", out / ".funnel.ab12.png"]
    for path in leftovers:
        path.write_text("half")
    keep = out / ".notes.txt.tmp"  # not a name funnel_tl writes: left alone
    keep.write_text("mine")
    assert main(measure_argv("run", "--prompts", two_prompts, "--bootstrap", "0", "--out", str(out))) == 0
    assert not any(path.exists() for path in leftovers) and keep.exists()
    assert remove_temporaries(out) == []


def test_unexpected_errors_are_one_line_with_a_pointer_to_debug(tmp_path, capsys, monkeypatch, two_prompts):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(gains_module, "measure_gains", broken)
    argv = measure_argv("run", "--prompts", two_prompts, "--out", str(tmp_path / "o"))
    assert main(argv) == 2
    one_line_error(capsys, "ZeroDivisionError: a bug", "--debug")
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *argv])
    with pytest.raises(ZeroDivisionError):
        main([*argv, "--debug"])


def test_an_unexpected_message_ending_in_a_colon_keeps_its_reason(tmp_path, capsys, monkeypatch, two_prompts):
    """huggingface_hub's config validation puts the reason on a second line; the one line keeps it."""

    def broken(*args, **kwargs):
        raise TypeError("Validation error for field 'hidden_size':\n    Field 'hidden_size' expected int, got str\n")

    monkeypatch.setattr(gains_module, "measure_gains", broken)
    assert main(measure_argv("run", "--prompts", two_prompts, "--out", str(tmp_path / "o"))) == 2
    one_line_error(
        capsys,
        "TypeError: Validation error for field 'hidden_size': Field 'hidden_size' expected int, "
        "got str (rerun with --debug",
    )


def test_report_into_a_read_only_folder(tmp_path, capsys, mount, two_prompts):
    """report writes funnel.html beside results.json: a read-only folder is one line, not a bug report."""
    out = tmp_path / "run"
    assert main(measure_argv("run", "--prompts", two_prompts, "--bootstrap", "0", "--out", str(out))) == 0
    folder = mount("size=1m")
    shutil.copy(out / "results.json", folder / "results.json")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    capsys.readouterr()
    assert main(["report", str(folder)]) == 2
    line = one_line_error(capsys, "read-only file system", "--debug")
    assert "report it" not in line  # the machine refused, not a bug of funnel_tl


def test_interrupt_stays_130(tmp_path, capsys, monkeypatch, two_prompts):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gains_module, "measure_gains", interrupted)
    assert main(measure_argv("run", "--prompts", two_prompts, "--out", str(tmp_path / "o"))) == 130


def test_batch_size_zero_is_caught_before_loading(tmp_path, capsys, no_model):
    assert main(measure_argv("run", "--batch-size", "0", "--out", str(tmp_path / "o"))) == 2
    one_line_error(capsys, "--batch-size")
    assert main(measure_argv("heads", "--drop-first", "-1", "--out", str(tmp_path / "o"))) == 2
    one_line_error(capsys, "--drop-first")


def test_results_file_messages(tmp_path, capsys):
    from synthetic_results import funnel_like

    result = funnel_like(n_layers=3, n_prompts=4).with_intervals(n_resamples=50, seed=0)
    data = result.to_dict()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps({**data, "schema_version": "1"}))
    assert main(["report", str(tmp_path / "a")]) == 2
    one_line_error(capsys, "schema_version '1'", "reads 1")
    (tmp_path / "b").mkdir()
    data["intervals"]["mlp"][0][0] = float("nan")
    (tmp_path / "b" / "results.json").write_text(json.dumps(data))
    assert main(["report", str(tmp_path / "b")]) == 2
    one_line_error(capsys, str(tmp_path / "b" / "results.json"), "NaN")


def test_nan_hint_does_not_suggest_float32_in_float32():
    import torch

    class Named:
        funnel_name = "m"

    norms = {"hook_attn_out": torch.tensor([[[1.0, float("nan")]]])}  # [layer, batch, pos]
    counted = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(FunnelError) as caught:
        gains_module.check_finite(Named(), norms, counted, [0], torch.float32)
    assert "try --dtype" not in str(caught.value) and "weights" in str(caught.value)
    with pytest.raises(FunnelError, match="try --dtype bfloat16 or float32"):
        gains_module.check_finite(Named(), norms, counted, [0], torch.float16)


def test_compare_on_a_disk_that_fills_ends_in_one_line(capsys, mount, monkeypatch, two_prompts):
    """The disk fills during a sweep: the model is recorded as failed, and the sweep's own files
    that cannot be written end in one line, not a traceback (it crashed on compare.html)."""
    folder = mount("size=40m")
    real = sweep_one_target.measure_gains
    monkeypatch.setattr(sweep_one_target, "measure_gains", filling_the_disk(real, folder))
    out = folder / "sweep"
    assert (
        main(["compare", "--models", "nano-2l", "--prompts", two_prompts, "--bootstrap", "0", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("funnel-tl: error: ") and "disk full" in err.strip().splitlines()[-1]
    row = next(line for line in err.splitlines() if "nano-2l: FAILED" in line)
    rescued = Path(row.split("saved to ")[1].split(" instead")[0])  # the model's measurement was kept
    try:
        assert GainResult.load(rescued).n_prompts == 2
    finally:
        shutil.rmtree(rescued.parent, ignore_errors=True)
    (folder / "ballast").unlink()  # room again: the same command finishes the sweep
    monkeypatch.setattr(sweep_one_target, "measure_gains", real)
    assert (
        main(["compare", "--models", "nano-2l", "--prompts", two_prompts, "--bootstrap", "0", "--out", str(out)]) == 0
    )
