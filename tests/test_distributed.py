"""Scale-out: torchrun data parallel, sharded sweeps, device maps, truncation and corpora.

The multi-process tests start 2 CPU processes with ``torchrun`` (gloo), exactly as a user would,
and compare what rank 0 writes with a single process's results from ``main(argv)`` in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from funnel_tl import head_gains, load_model, measure_gains
from funnel_tl.cli.entry import main
from funnel_tl.errors import FunnelError
from funnel_tl.measure.distributed import World, assemble, in_callers_terms, shard_by_tokens
from funnel_tl.prompts.corpus import documents
from funnel_tl.prompts.sources import read_prompts
from funnel_tl.prompts.tokens import make_batches
from funnel_tl.sweep.plan import assign_targets
from funnel_tl.testing.reference import seed_reference

# Two processes compute every prompt in the very batch one process would (shard_by_tokens keeps
# batches whole), so the sums agree to rounding; the bar is 1e-6.
RTOL = 1e-6
COMPONENTS = ("attn", "mlp", "block")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(args: list[str], cwd: Path, n: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node n -m funnel_tl ARGS`` on the CPU, on a free port."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(n),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "funnel_tl",
        *args,
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _corpus(path: Path, n: int = 24, chars: int = 1500) -> Path:
    """Pydoc passages of very different lengths, several longer than nano's 256-token context."""
    texts = [" ".join(text.split())[: chars if i % 3 else 120] for i, (_, text) in enumerate(documents("all")[:n])]
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return path


# ---- sharing out the work --------------------------------------------------------------------------
def test_shards_are_whole_batches_balanced_by_tokens():
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(1, 300, size=101)]
    shares = shard_by_tokens(lengths, 3, batch_size=8)
    assert sorted(i for share in shares for i in share) == list(range(101))  # every prompt exactly once
    whole = {tuple(batch.indices) for batch in make_batches([[0] * n for n in lengths], 8)}
    for share in shares:  # each share, batched on its own, forms batches of the single process
        own = make_batches([[0] * lengths[i] for i in share], 8)
        assert {tuple(share[i] for i in batch.indices) for batch in own} <= whole
    padded = [
        sum(len(b.indices) * b.tokens.shape[1] for b in make_batches([[0] * lengths[i] for i in s], 8)) for s in shares
    ]
    largest_batch = max(len(b.indices) * b.tokens.shape[1] for b in make_batches([[0] * n for n in lengths], 8))
    assert max(padded) - min(padded) <= largest_batch  # greedy by tokens: within one batch of even
    by_count = shard_by_tokens(lengths, 3, batch_size=1)
    assert len({len(share) for share in by_count}) > 1  # balanced by tokens, not by prompt counts


def test_targets_dealt_skip_finished_and_cover_pending_once():
    pending = [0, 2, 3, 5, 6, 9]
    for n in (1, 2, 4, 7):
        dealt = [assign_targets(pending, n, rank) for rank in range(n)]
        assert sorted(i for part in dealt for i in part) == pending


def test_assemble_restores_the_callers_order(bridge):
    model = bridge("gpt2")
    prompts = ["a b c", "the quick brown fox", "x", "one two three four five six"]
    whole = measure_gains(model, prompts, batch_size=2)
    parts = [
        ([1, 3], measure_gains(model, [prompts[1], prompts[3]], batch_size=2)),
        ([], None),
        ([0, 2], measure_gains(model, [prompts[0], prompts[2]], batch_size=2)),
    ]
    merged = assemble(parts, prompts)
    assert merged.prompts == whole.prompts
    np.testing.assert_array_equal(merged.n_tokens, whole.n_tokens)
    for component in COMPONENTS:
        np.testing.assert_allclose(merged.out_sums[component], whole.out_sums[component], rtol=RTOL)
    assert merged.provenance["world_size"] == 3 and merged.provenance["prompts_per_rank"] == [2, 0, 2]
    assert merged.provenance["prompts_sha256"] == whole.provenance["prompts_sha256"]
    assert merged.provenance["n_tokens_total"] == whole.provenance["n_tokens_total"]


def test_errors_inside_a_share_name_prompts_by_the_callers_index(bridge):
    share = [5, 2, 11]  # this rank's prompts, as places in the caller's list
    with pytest.raises(FunnelError) as raised:  # a real message of the measurement, naming prompt 1 of its list
        measure_gains(bridge("gpt2"), ["fine", "word " * 1000, "also fine"])
    renamed = str(in_callers_terms(raised.value, share))
    assert renamed.startswith("prompt 2 has ") and str(raised.value).startswith("prompt 1 has ")


def _fail_on_rank_one(rank: int, port: int, folder: str) -> None:
    import torch.distributed as dist

    from funnel_tl.measure.distributed import together, world

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        with together(world()):
            if rank == 1:
                raise FunnelError("prompt 3 overflows")
        outcome = "no error"
    except FunnelError as error:
        outcome = str(error)
    finally:
        dist.destroy_process_group()
    Path(folder, f"rank{rank}.txt").write_text(outcome)


def test_a_failing_rank_stops_every_rank_with_one_line_naming_it(tmp_path):
    mp.spawn(_fail_on_rank_one, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):  # the rank that did not fail does not wait for it: it fails too, saying why
        assert (tmp_path / f"rank{rank}.txt").read_text() == "rank 1 of 2 failed: prompt 3 overflows"


# ---- torchrun end to end ---------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_run_equals_one_process(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt")
    common = [
        "--model",
        "nano-4l",
        "--prompts",
        str(corpus),
        "--device",
        "cpu",
        "--bootstrap",
        "0",
        "--max-tokens-per-prompt",
        "context",
        "--by-position",
    ]
    done = _torchrun(["run", *common, "--out", str(tmp_path / "two")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = [line for line in done.stdout.splitlines() if line.startswith("Saved: ")]
    assert any(line.endswith("results.json") for line in saved) and len(saved) == len(set(saved))  # rank 0 alone
    assert main(["run", *common, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    assert two["prompts"]["texts"] == one["prompts"]["texts"]  # the caller's order
    assert two["per_prompt"]["n_tokens"] == one["per_prompt"]["n_tokens"]
    for component in COMPONENTS:
        for key in ("out_sum", "in_sum"):
            np.testing.assert_allclose(two["per_prompt"][component][key], one["per_prompt"][component][key], rtol=RTOL)
    np.testing.assert_allclose(two["mlp"]["gains"], one["mlp"]["gains"], rtol=RTOL)
    # By position: ranks with shorter prompts have fewer buckets; rank 0 pads them with zeros.
    assert two["by_position"]["edges"] == one["by_position"]["edges"]
    assert two["by_position"]["per_prompt"]["n_tokens"] == one["by_position"]["per_prompt"]["n_tokens"]
    for component in COMPONENTS:
        np.testing.assert_allclose(
            two["by_position"]["per_prompt"][component]["out_sum"],
            one["by_position"]["per_prompt"][component]["out_sum"],
            rtol=RTOL,
        )
    assert two["provenance"]["world_size"] == 2 and sum(two["provenance"]["prompts_per_rank"]) == 24
    assert two["provenance"]["truncation"] == one["provenance"]["truncation"]
    assert one["provenance"]["truncation"]["n_truncated"] > 0  # the corpus did need truncating


@pytest.mark.slow
def test_torchrun_error_is_one_line_on_every_rank(tmp_path):
    done = _torchrun(["run", "--model", "nano-99l", "--device", "cpu", "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert done.returncode != 0
    # Both ranks write to one stderr, and print() writes the newline separately: lines can interleave.
    assert done.stderr.count("funnel-tl: error: no bundled model called 'nano-99l'") == 2
    frames = [line for line in done.stderr.splitlines() if line.strip().startswith('File "')]
    assert not [frame for frame in frames if "funnel_tl" in frame]  # torchrun's own report only, no rank traceback


@pytest.mark.slow
def test_torchrun_heads_equals_one_process(tmp_path):
    corpus = _corpus(tmp_path / "corpus.txt", n=10, chars=600)
    common = ["--model", "nano-2l", "--prompts", str(corpus), "--device", "cpu", "--batch-size", "2", "--by-position"]
    done = _torchrun(["heads", *common, "--out", str(tmp_path / "two")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["heads", *common, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "heads.json").read_text())
    one = json.loads((tmp_path / "one" / "heads.json").read_text())
    assert two["prompts"]["texts"] == one["prompts"]["texts"]
    for key in ("n_tokens", "head_norm_sum", "head_projection_sum", "attn_out_sum", "in_sum"):
        np.testing.assert_allclose(two["per_prompt"][key], one["per_prompt"][key], rtol=RTOL, atol=1e-9)
    assert two["provenance"]["world_size"] == 2
    for key in ("n_tokens", "head_norm_sum", "in_sum"):
        np.testing.assert_allclose(
            two["by_position"]["per_prompt"][key], one["by_position"]["per_prompt"][key], rtol=RTOL, atol=1e-9
        )


@pytest.mark.slow
def test_torchrun_compare_shards_targets_and_resumes_with_any_world_size(tmp_path):
    models = ["nano-2l", "nano-4l", "nano-8l"]
    common = ["--device", "cpu", "--bootstrap", "50"]
    done = _torchrun(["compare", "--models", *models, *common, "--out", str(tmp_path / "two")], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["compare", "--models", *models, *common, "--out", str(tmp_path / "one")]) == 0
    sweep = json.loads((tmp_path / "two" / "compare.json").read_text())
    assert [row["model"] for row in sweep["models"]] == models and sweep["world_size"] == 2
    for index, model in enumerate(models):
        two = json.loads((tmp_path / "two" / model / "results.json").read_text())
        one = json.loads((tmp_path / "one" / model / "results.json").read_text())
        assert two["provenance"]["rank"] == index % 2  # dealt round robin: each measured by one rank
        for component in COMPONENTS:
            np.testing.assert_allclose(
                two["per_prompt"][component]["out_sum"], one["per_prompt"][component]["out_sum"], rtol=RTOL
            )
        assert two["intervals"] == one["intervals"]  # same sums, same seed: the same resamples
    # A rerun with another number of processes measures only what is missing.
    (tmp_path / "two" / "nano-4l" / "results.json").unlink()
    assert main(["compare", "--models", *models, *common, "--out", str(tmp_path / "two")]) == 0
    rows = {row["model"]: row for row in json.loads((tmp_path / "two" / "compare.json").read_text())["models"]}
    assert {model: row["resumed"] for model, row in rows.items()} == {
        "nano-2l": True,
        "nano-4l": False,
        "nano-8l": True,
    }


@pytest.mark.slow
def test_torchrun_sweep_over_several_sizes_equals_one_process(tmp_path, tokenizer):
    """`--models a,b --checkpoints all`: every checkpoint of two sizes dealt over 2 ranks, the same
    table and sums as one process; the paths typed otherwise by the second run name the same models."""
    from funnel_tl.testing.toy import build_training_run

    for name, layers, width in (("small", 2, 32), ("large", 3, 48)):
        build_training_run(tmp_path / name, [0, 16, 1000], tokenizer=tokenizer, n_layers=layers, d_model=width)
    common = ["--checkpoints", "all", "--device", "cpu", "--bootstrap", "50"]
    done = _torchrun(["compare", "--models", "small,large", *common, "--out", "two"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    absolute = f"{tmp_path / 'small'}/,{tmp_path / 'large'}"
    assert main(["compare", "--models", absolute, *common, "--out", str(tmp_path / "one")]) == 0
    two = json.loads((tmp_path / "two" / "compare.json").read_text())
    one = json.loads((tmp_path / "one" / "compare.json").read_text())
    assert (
        [row["model"] for row in two["models"]]
        == [row["model"] for row in one["models"]]
        == [f"{tmp_path / name}@step{step}" for name in ("small", "large") for step in (0, 16, 1000)]
    )
    assert two["world_size"] == 2 and not any(row["resumed"] for row in two["models"])
    for row in one["models"]:
        a = json.loads((tmp_path / "two" / row["slug"] / "results.json").read_text())
        b = json.loads((tmp_path / "one" / row["slug"] / "results.json").read_text())
        for component in COMPONENTS:
            np.testing.assert_allclose(
                a["per_prompt"][component]["out_sum"], b["per_prompt"][component]["out_sum"], rtol=RTOL
            )
        assert a["intervals"] == b["intervals"]
    assert {
        json.loads((tmp_path / "two" / row["slug"] / "results.json").read_text())["provenance"]["rank"]
        for row in two["models"]
    } == {0, 1}  # both ranks measured
    page = (tmp_path / "two" / "compare.html").read_text()
    assert "6 checkpoints of 2 models" in page and page.count('<details class="verdicts">') == 2


# ---- models larger than a device -------------------------------------------------------------------
def test_device_mapped_model_equals_the_plain_one(tmp_path):
    """An explicit map that offloads layer 1 (accelerate keeps its weights on disk, materializes them per call)."""
    plain = measure_gains(load_model("nano-2l", device="cpu"), "seed")
    device_map = {
        "gpt_neox.embed_in": "cpu",
        "gpt_neox.layers.0": "cpu",
        "gpt_neox.layers.1": "disk",
        "gpt_neox.final_layer_norm": "cpu",
        "gpt_neox.rotary_emb": "cpu",
        "lm_head": "cpu",
    }
    mapped_model = load_model("nano-2l", device_map=device_map, dtype="float32", offload_folder=str(tmp_path))
    assert mapped_model.original_model.hf_device_map == device_map  # the map was applied, not ignored
    mapped = measure_gains(mapped_model, "seed")
    for component in COMPONENTS:
        np.testing.assert_allclose(mapped.out_sums[component], plain.out_sums[component], rtol=RTOL)
        np.testing.assert_allclose(mapped.in_sums[component], plain.in_sums[component], rtol=RTOL)

    with pytest.raises(FunnelError, match="offloaded"):  # head gains read W_O, which offloading leaves on meta
        head_gains(mapped_model, "seed")


def test_device_map_options_are_checked_before_loading(capsys):
    assert main(["run", "--model", "nano-2l", "--max-memory", "0=1GiB", "--device", "cpu"]) == 2
    assert "--max-memory needs --device-map" in capsys.readouterr().err
    assert main(["run", "--max-memory", "0=", "--device", "cpu"]) == 2  # argparse: a malformed budget, one line
    from funnel_tl.cli.commands import placement
    from funnel_tl.cli.entry import build_parser

    args = build_parser().parse_args(["run", "--device-map", "auto"])
    with pytest.raises(FunnelError, match="torchrun"):
        placement(args, World(rank=0, size=2))


# ---- corpora ---------------------------------------------------------------------------------------
def test_long_prompts_fail_by_default_and_point_to_truncation(bridge):
    with pytest.raises(FunnelError, match="--max-tokens-per-prompt"):
        measure_gains(bridge("gpt2"), ["word " * 1000])


@pytest.mark.parametrize("arch", ["gpt2", "neox-parallel"])
def test_truncation_equals_the_seed_method_on_truncated_tokens(arch, bridge, hf_model, tokenizer):
    prompts = [
        "one two three four five six seven eight nine ten eleven twelve",
        "short one",
        "The quick brown fox jumps over the lazy dog near the river bank.",
    ]
    limit = 6
    result = measure_gains(bridge(arch), prompts, max_tokens_per_prompt=limit, batch_size=2)

    def truncating(prompt, return_tensors):  # HF's own truncation: independent of funnel_tl's
        return tokenizer(prompt, return_tensors=return_tensors, truncation=True, max_length=limit)

    reference = seed_reference(hf_model(arch), truncating, prompts)
    counts = result.n_tokens[:, None]
    # float32 on both paths, summation order only (~1e-7); the other tests of the seed method use 1e-4.
    np.testing.assert_allclose(result.out_sums["mlp"] / counts, reference["mlp_out"], rtol=1e-4)
    np.testing.assert_allclose(result.in_sums["block"] / counts, reference["resid_pre"], rtol=1e-4)
    record = result.provenance["truncation"]
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    assert record["truncated_prompts"] == [i for i, n in enumerate(lengths) if n > limit]
    assert record["tokens_dropped"] == sum(n - limit for n in lengths if n > limit)
    assert list(result.n_tokens) == [min(n, limit) for n in lengths]


def test_max_prompts_reads_no_further(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "first"}\n\n{"text": "second"}\n{"text": "third"}\nthis line is not JSON\n')
    prompts, record = read_prompts(str(path), max_prompts=2)
    assert prompts == ["first", "second"] and record["more_available"] is True and record["max_prompts"] == 2
    prompts, record = read_prompts(str(path), max_prompts=3)
    assert prompts == ["first", "second", "third"] and record["more_available"] is True
    with pytest.raises(FunnelError, match="corpus.jsonl:5"):  # read to the end, the bad line is found
        read_prompts(str(path))


def test_max_prompts_reads_as_strictly_as_load_prompts(tmp_path):
    """The capped path is load_prompts' own reader: the same refusals inside the cap, every format."""
    records = tmp_path / "corpus.jsonl"
    records.write_text('{"text": "first"}\n{"text": null}\n{"text": "third"}\n')
    with pytest.raises(FunnelError, match=r"corpus.jsonl:2: a prompt must be a string, got null"):
        read_prompts(str(records), max_prompts=2)
    listed = tmp_path / "prompts.json"
    listed.write_text('["A", "B", "C"]')
    assert read_prompts(str(listed), max_prompts=2)[0] == ["A", "B"]  # items, not the file's lines


def test_read_prompts_reads_a_file_once_and_a_stream_checks_it_first(tmp_path, monkeypatch):
    import funnel_tl.prompts.sources as sources

    path = tmp_path / "corpus.txt"
    path.write_text("one\ntwo\nthree\n")
    opened = []
    real = sources.iter_prompts
    monkeypatch.setattr(sources, "iter_prompts", lambda source: opened.append(source) or real(source))
    assert read_prompts(str(path), max_prompts=2) == (
        ["one", "two"],
        {"source": str(path), "max_prompts": 2, "n_prompts": 2, "more_available": True},
    )
    assert len(opened) == 1
    opened.clear()
    stream, _ = sources.stream_prompts(str(path))
    assert len(opened) == 2 and list(stream) == ["one", "two", "three"]  # a read-ahead, then the reading


def test_dataset_source_from_local_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"id": i, "body": text} for i, text in enumerate(["alpha beta", "", "gamma delta", "epsilon"])]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    prompts, record = read_prompts(dataset=str(path), text_field="body")
    assert prompts == ["alpha beta", "gamma delta", "epsilon"] and record["more_available"] is False
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    prompts, record = read_prompts(dataset=str(tmp_path / "saved"), text_field="body", max_prompts=2)
    assert prompts == ["alpha beta", "gamma delta"] and record["more_available"] is True
    with pytest.raises(FunnelError, match="no field 'text'.*--text-field"):
        read_prompts(dataset=str(path))


def test_cli_records_the_dataset_and_the_cap(tmp_path, capsys):
    pytest.importorskip("datasets")
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["a first line", "a second", "a third"]))
    assert (
        main(
            [
                "run",
                "--model",
                "nano-2l",
                "--dataset",
                str(path),
                "--max-prompts",
                "2",
                "--device",
                "cpu",
                "--bootstrap",
                "0",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    assert "first 2 prompts" in capsys.readouterr().out
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["prompts"]["texts"] == ["a first line", "a second"]
    assert data["provenance"]["prompt_source"]["more_available"] is True


@pytest.mark.slow
def test_bench_distributed_runs_and_finds_equal_sums():
    """The benchmark must not rot unseen; no timing is asserted (speed depends on the machine)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_distributed.py"
    done = subprocess.run(
        [sys.executable, str(script), "--model", "nano-2l", "--n-prompts", "6", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "speed-up" in done.stdout
    assert float(done.stdout.split("per-prompt sums:")[1].split()[0]) <= RTOL
