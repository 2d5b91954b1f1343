"""``funnel-tl run`` end to end through main(argv), and every bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from funnel_tl.cli.entry import main
from funnel_tl.prompts.sets import SEED_PROMPTS
from funnel_tl.testing.reference import reference_gains, seed_reference
from funnel_tl.testing.toy import ARCHITECTURES

# float32 on both paths; they differ only in summation order (~1e-7).
RELATIVE = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("definition", ["seed", "residual"])
def test_run_reproduces_the_seed_method(arch, definition, checkpoints, hf_model, tokenizer, tmp_path, capsys):
    """The issue's 'done when': the CLI on a local checkpoint of each architecture."""
    code = main(
        [
            "run",
            "--model",
            str(checkpoints[arch]),
            "--prompts",
            "seed",
            "--definition",
            definition,
            "--device",
            "cpu",
            "--dtype",
            "float32",
            "--batch-size",
            "8",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "FUNNEL MODEL CONFIRMED" in printed and "CROSS-MODEL COMPARISON" in printed
    data = json.loads((tmp_path / "results.json").read_text())
    reference = reference_gains(seed_reference(hf_model(arch), tokenizer, list(SEED_PROMPTS)), definition)
    np.testing.assert_allclose(data["attention"]["gains"], reference["attn"], rtol=RELATIVE)
    np.testing.assert_allclose(data["mlp"]["gains"], reference["mlp"], rtol=RELATIVE)
    np.testing.assert_allclose(data["block"]["gains"], reference["block"], rtol=RELATIVE)
    assert data["provenance"]["dtype"] == "float32" and data["definition"] == definition


def test_prompt_files(checkpoints, tmp_path, capsys):
    text = tmp_path / "prompts.txt"
    text.write_text("first prompt here\n\n   \nsecond prompt\n")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text('{"text": "first prompt here"}\n{"text": "second prompt"}\n')
    for source, out in ((text, "a"), (jsonl, "b")):
        assert (
            main(["run", "--model", str(checkpoints["gpt2"]), "--prompts", str(source), "--out", str(tmp_path / out)])
            == 0
        )
    a = json.loads((tmp_path / "a" / "results.json").read_text())
    b = json.loads((tmp_path / "b" / "results.json").read_text())
    assert a["n_prompts"] == 2 and a["prompts"]["texts"] == ["first prompt here", "second prompt"]
    assert a["attention"]["gains"] == b["attention"]["gains"]


def _bad(argv, capsys, expected):
    with pytest.raises(SystemExit) as exit_info:
        raise SystemExit(main(argv))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert "Traceback" not in error
    assert expected in error, error


def test_bad_inputs(checkpoints, tmp_path, capsys):
    model = str(checkpoints["gpt2"])
    _bad(["run", "--model", str(tmp_path / "no-such-folder")], capsys, "model folder not found")
    _bad(["run", "--model", model, "--prompts", str(tmp_path / "missing.txt")], capsys, "prompt file not found")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    _bad(["run", "--model", model, "--prompts", str(empty)], capsys, "no prompts in")
    long = tmp_path / "long.txt"
    long.write_text("word " * 400 + "\n")
    _bad(["run", "--model", model, "--prompts", str(long)], capsys, "context of 128")
    _bad(["run", "--model", model, "--definition", "bogus"], capsys, "invalid choice: 'bogus'")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"prompt": "no text key"}\n')
    _bad(["run", "--model", model, "--prompts", str(bad_jsonl)], capsys, 'a "text" field, got an object with "prompt"')
    no_config = tmp_path / "not-a-checkpoint"
    no_config.mkdir()
    _bad(["run", "--model", str(no_config)], capsys, "holds no config.json")


def test_unknown_hub_model_offline(capsys, monkeypatch):
    """A hub name that cannot be fetched (no network here) is one clear line, not a traceback."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _bad(["run", "--model", "nobody-xyz/no-such-model-123"], capsys, "cannot load model 'nobody-xyz/no-such-model-123'")


def test_help_explains_itself(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--model",
        "--prompts",
        "--definition",
        "--batch-size",
        "--device",
        "--dtype",
        "--drop-first",
        "--out",
    ):
        assert option in text


def test_revision_loads_a_training_checkpoint(tmp_path):
    """--revision reaches load_model: a bundled checkpoint gives its own numbers, named by its step."""
    assert (
        main(["run", "--model", "nano-4l", "--revision", "step16", "--bootstrap", "0", "--out", str(tmp_path / "a")])
        == 0
    )
    assert main(["run", "--model", "nano-4l", "--bootstrap", "0", "--out", str(tmp_path / "b")]) == 0
    early = json.loads((tmp_path / "a" / "results.json").read_text())
    final = json.loads((tmp_path / "b" / "results.json").read_text())
    assert early["model"] == "nano-4l@step16" and final["model"] == "nano-4l"
    assert not np.allclose(early["mlp"]["gains"], final["mlp"]["gains"], rtol=1e-2)


def test_unknown_revision(capsys):
    _bad(["run", "--model", "nano-4l", "--revision", "step7"], capsys, "step7")


def test_version(capsys):
    from funnel_tl import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"funnel-tl {__version__}"


# ---- names, labels, built-in prompt sets, images ----------------------------------------------------
def test_default_folder_and_titles_name_a_local_model_by_its_folder_or_its_label(checkpoints, tmp_path, monkeypatch):
    """`run --model /tmp/smollm2-hf` wrote runs/tmp__…__smollm2-hf and titled its page with the path."""
    monkeypatch.chdir(tmp_path)
    folder = checkpoints["llama-gqa"].resolve()
    assert main(["run", "--model", str(folder), "--bootstrap", "0"]) == 0
    page = tmp_path / "runs" / folder.name / "funnel.html"
    assert page.is_file() and [p.name for p in (tmp_path / "runs").iterdir()] == [folder.name]
    assert f"<title>{folder.name}: " in page.read_text() and str(folder.parent) not in page.read_text()
    assert main(["run", "--model", str(folder), "--bootstrap", "0", "--label", "Llama (GQA) toy"]) == 0
    data = json.loads((tmp_path / "runs" / "Llama_GQA_toy" / "results.json").read_text())
    assert data["model"] == "Llama (GQA) toy" and data["provenance"]["model_loaded_as"] == str(folder)
    assert "<title>Llama (GQA) toy: " in (tmp_path / "runs" / "Llama_GQA_toy" / "funnel.html").read_text()
    assert main(["heads", "--model", str(folder), "--label", "Llama (GQA) toy", "--top", "2"]) == 0
    heads = json.loads((tmp_path / "runs" / "Llama_GQA_toy" / "heads.json").read_text())
    assert heads["model"] == "Llama (GQA) toy"


def test_a_label_is_one_line_of_text(capsys):
    for bad in ("", "   ", "two\nlines"):
        _bad(["run", "--label", bad], capsys, "a label names the model in one line of text")


def test_the_varied_prompt_set_by_name(tmp_path, capsys):
    assert main(["run", "--model", "nano-2l", "--prompts", "varied", "--max-prompts", "3", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["n_prompts"] == 3 and data["provenance"]["prompt_source"]["source"] == "varied"
    assert data["prompts"]["texts"][0].startswith("ABILITY, n.")  # the first passage: The Devil's Dictionary
    assert "--prompts varied" in capsys.readouterr().out  # the analysis says where firmer intervals come from


@pytest.mark.slow
def test_png_writes_every_page_as_png_svg_and_pdf(tmp_path, capsys):
    from funnel_tl import plots

    if not plots.png_available():
        pytest.skip(f"--png needs kaleido and Chrome: {plots.png_missing()}")
    out = tmp_path / "run"
    assert main(["run", "--model", "nano-2l", "--by-position", "--png", "--out", str(out)]) == 0
    assert main(["heads", "--model", "nano-2l", "--png", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"Saved: {out}/{{funnel,positions-heatmaps,positions-sink}}.{{png,svg,pdf}}" in printed
    assert f"Saved: {out}/{{heads}}.{{png,svg,pdf}}" in printed
    pages = ("funnel", "positions-heatmaps", "positions-sink", "heads")
    expected = {f"{name}.{kind}" for name in pages for kind in ("png", "svg", "pdf")}
    assert expected <= {path.name for path in out.iterdir()}
    for kind in ("png", "svg", "pdf"):
        (out / f"funnel.{kind}").unlink()
    assert main(["report", str(out), "--png"]) == 0  # report redraws them from the files
    assert (out / "funnel.pdf").read_bytes()[:5] == b"%PDF-"
    sweep = tmp_path / "sweep"
    assert main(["compare", "--models", "nano-2l", "nano-4l", "--png", "--out", str(sweep)]) == 0
    assert {f"compare-{name}.svg" for name in ("depth", "heatmap-attn", "heatmap-mlp")} <= {
        p.name for p in sweep.iterdir()
    }
