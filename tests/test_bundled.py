"""The bundled nano models: they load offline, they are really trained, their checkpoints sweep.

Held-out losses here are computed independently of scripts/train_nano.py: the plain HF model,
its own ``labels=`` loss (HF shifts the targets itself), on held-out text rebuilt from this
Python's standard library by ``funnel_tl.prompts.corpus`` (held out by name hash, so a document held out
at training time is held out on every Python version).
"""

from __future__ import annotations

import json
import math
import platform
import re
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import einops
import pytest
import torch

from funnel_tl import FunnelError, bundled_checkpoints, bundled_models, default_model_name, load_model, measure_gains
from funnel_tl.cli.entry import main
from funnel_tl.models.loading import BUNDLED_DIR
from funnel_tl.prompts.corpus import documents, is_heldout

NAMES = ("nano-2l", "nano-4l", "nano-8l")  # smallest first
CHECKPOINTED = "nano-4l"
N_CTX = 256
# 24 × 256 of the 42k held-out tokens, a second per model: within 0.1 nats of the loss on all of
# them (measured 0.004-0.08 lower), against margins of 0.4 nats or more in the tests below.
N_WINDOWS = 24


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, so a test passing under it ran offline."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def n_parameters(folder: Path) -> int:
    from safetensors.torch import load_file

    return sum(tensor.numel() for tensor in load_file(folder / "model.safetensors").values())


def hf_causal_lm(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def heldout_windows(tokenizer) -> torch.Tensor:
    """N_WINDOWS windows of N_CTX tokens spread evenly over the held-out text."""
    ids: list[int] = []
    for _, text in documents("heldout"):
        ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
    n_all = len(ids) // N_CTX
    windows = einops.rearrange(torch.tensor(ids[: n_all * N_CTX]), "(window pos) -> window pos", pos=N_CTX)
    return windows[torch.linspace(0, n_all - 1, N_WINDOWS).round().long()]  # [window, pos]


@torch.no_grad()
def heldout_loss(folder: Path) -> float:
    model, tokenizer = hf_causal_lm(folder)
    windows = heldout_windows(tokenizer)  # [window, pos]
    return model(input_ids=windows, labels=windows).loss.item()


def test_the_bundled_models_are_installed_smallest_first():
    assert list(bundled_models())[: len(NAMES)] == list(NAMES)
    sizes = [n_parameters(bundled_models()[name]) for name in NAMES]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_all_package_data_fits_the_budget():
    total = sum(f.stat().st_size for f in BUNDLED_DIR.rglob("*") if f.is_file())
    assert total <= 30 * 2**20


@pytest.mark.parametrize("name", NAMES)
def test_each_bundled_model_loads_offline_and_measures(name, no_network):
    model = load_model(name, device="cpu")
    result = measure_gains(model, "seed")
    config = json.loads((bundled_models()[name] / "config.json").read_text())
    assert result.model == name
    assert result.attn_gains.shape == (config["num_hidden_layers"],)
    assert all(torch.isfinite(torch.as_tensor(result.gains(c))).all() for c in ("attn", "mlp", "block"))


def test_bundled_models_are_parallel_rotary_neox_like_pythia():
    for name in NAMES:
        config = json.loads((bundled_models()[name] / "config.json").read_text())
        assert config["model_type"] == "gpt_neox"
        assert config["use_parallel_residual"] is True
        assert config["intermediate_size"] == 4 * config["hidden_size"]
        assert config["rope_parameters"]["partial_rotary_factor"] == 0.25


def test_the_tokenizer_adds_no_bos_like_pythias():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_models()["nano-8l"])
    prompt = "The capital of France is Paris"
    ids = tokenizer(prompt)["input_ids"]
    assert tokenizer.bos_token_id not in ids
    assert tokenizer.decode(ids) == prompt


def test_the_default_of_run_is_the_largest_bundled_model(tmp_path, no_network):
    largest = max(NAMES, key=lambda name: n_parameters(bundled_models()[name]))
    assert default_model_name() == largest
    assert main(["run", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["model"] == largest


def test_checkpoints_are_listed_in_step_order_with_step_0():
    checkpoints = bundled_checkpoints(CHECKPOINTED)
    steps = list(checkpoints)
    assert len(steps) >= 5 and steps[0] == 0
    assert steps == sorted(steps)
    assert all(folder.name == f"step{step}" for step, folder in checkpoints.items())
    assert bundled_checkpoints("nano-2l") == {}


def test_a_revision_loads_that_checkpoint(no_network):
    from safetensors.torch import load_file

    step, folder = list(bundled_checkpoints(CHECKPOINTED).items())[1]
    model = load_model(CHECKPOINTED, device="cpu", revision=f"step{step}")
    assert model.funnel_name == f"{CHECKPOINTED}@step{step}"
    stored = load_file(folder / "model.safetensors")["gpt_neox.embed_in.weight"].float()
    # Exact: the float16 weights are widened to float32, which represents every float16 value.
    assert torch.equal(model.original_model.gpt_neox.embed_in.weight.detach(), stored)
    final = load_file(bundled_models()[CHECKPOINTED] / "model.safetensors")["gpt_neox.embed_in.weight"].float()
    assert not torch.equal(stored, final)


def test_the_last_checkpoint_is_the_shipped_model():
    from safetensors.torch import load_file

    last = list(bundled_checkpoints(CHECKPOINTED).values())[-1]
    shipped = load_file(bundled_models()[CHECKPOINTED] / "model.safetensors")
    stored = load_file(last / "model.safetensors")
    assert shipped.keys() == stored.keys()
    assert all(torch.equal(shipped[key], stored[key]) for key in shipped)


def test_an_unknown_revision_names_the_available_steps():
    with pytest.raises(FunnelError, match=r"step0.*step\d+") as error:
        load_model(CHECKPOINTED, device="cpu", revision="step7")
    assert "step7" in str(error.value)
    with pytest.raises(FunnelError, match="ships no checkpoints"):
        load_model("nano-2l", device="cpu", revision="step0")


def test_a_mistyped_bundled_name_fails_at_once_naming_the_bundled_models(no_network):
    with pytest.raises(FunnelError, match="nano-2l, nano-4l, nano-8l"):
        load_model("nano-9l", device="cpu")


def test_heldout_text_is_disjoint_from_training_text():
    train = dict(documents("train"))
    heldout = dict(documents("heldout"))
    assert heldout and not train.keys() & heldout.keys()
    assert all(is_heldout(name) for name in heldout)
    held_chars = sum(map(len, heldout.values()))
    # ≈5% by design; on other Python versions the documents (and so the share) shift a little.
    assert 0.03 < held_chars / (held_chars + sum(map(len, train.values()))) < 0.08


@pytest.mark.parametrize("name", NAMES)
def test_each_model_is_really_trained(name):
    vocab = json.loads((bundled_models()[name] / "config.json").read_text())["vocab_size"]
    assert heldout_loss(bundled_models()[name]) < 0.6 * math.log(vocab)


def test_heldout_loss_falls_across_the_checkpoints():
    checkpoints = bundled_checkpoints(CHECKPOINTED)
    losses = [heldout_loss(folder) for folder in checkpoints.values()]
    vocab = json.loads((bundled_models()[CHECKPOINTED] / "config.json").read_text())["vocab_size"]
    # Step 0 is the random initialization: weights of std 0.02 give near-uniform predictions.
    assert abs(losses[0] - math.log(vocab)) < 0.2
    assert all(later < earlier for earlier, later in zip(losses, losses[1:], strict=False)), losses


def card_losses(name: str) -> tuple[str, dict[int, float]]:
    """The Python version and the step → held-out loss table of a model card."""
    card = (bundled_models()[name] / "MODEL_CARD.md").read_text(encoding="utf-8")
    python = re.search(r"docstrings of CPython (\d+\.\d+\.\d+)", card).group(1)
    table = card.split("## Held-out loss", 1)[1].split("##", 1)[0]
    rows = re.findall(r"^\| (\d+) \| [\d,]+ \| (\d+\.\d+) \|$", table, flags=re.MULTILINE)
    return python, {int(step): float(loss) for step, loss in rows}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_model_cards_report_the_heldout_loss_of_the_shipped_weights(name):
    python, losses = card_losses(name)
    if python != platform.python_version():
        pytest.skip(f"the card's held-out text comes from Python {python}")
    folders = bundled_checkpoints(name) or {max(losses): bundled_models()[name]}
    assert sorted(losses) == sorted(folders)
    for step, folder in folders.items():
        model, tokenizer = hf_causal_lm(folder)
        ids: list[int] = []
        for _, text in documents("heldout"):
            ids += tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]
        # The card scores every next token of each window (N_CTX targets, the next window's first
        # token included); the HF labels= loss scores N_CTX - 1 per window, so rebuild the card's way.
        n_windows = (len(ids) - 1) // N_CTX
        stream = torch.tensor(ids)
        total = 0.0
        with torch.no_grad():
            for start in range(0, n_windows, 32):
                rows = torch.arange(start, min(start + 32, n_windows))
                inputs = stream[rows[:, None] * N_CTX + torch.arange(N_CTX)]  # [window, pos]
                targets = stream[rows[:, None] * N_CTX + torch.arange(N_CTX) + 1]  # [window, pos]
                log_probs = model(input_ids=inputs).logits.log_softmax(-1)  # [window, pos, vocab]
                total -= log_probs.gather(-1, targets[..., None]).sum().item()
        # The card rounds to 4 decimals; summation order differs from the script's (float32).
        assert total / (n_windows * N_CTX) == pytest.approx(losses[step], abs=2e-4)


@pytest.mark.slow
def test_a_built_wheel_contains_every_bundled_file(tmp_path):
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(root),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("funnel_tl-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        packed = {info.filename: info.file_size for info in archive.infolist()}
    expected = {
        f"funnel_tl/models/bundled/{f.relative_to(BUNDLED_DIR).as_posix()}": f.stat().st_size
        for f in BUNDLED_DIR.rglob("*")
        if f.is_file() and not f.name.startswith(".")
    }
    assert expected and {name: packed.get(name) for name in expected} == expected
    assert "funnel_tl/py.typed" in packed  # PEP 561: the annotations are for type checkers too
