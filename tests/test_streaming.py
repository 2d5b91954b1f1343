"""Streamed corpora (funnel_tl.measure.streaming): chunked measurements equal whole ones, memory flat in corpus size."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from funnel_tl import GainResult, measure_gains
from funnel_tl.measure.heads import head_gains
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.measure.streaming import PromptDigest, TokenStream
from funnel_tl.prompts.sets import prompts_sha256
from funnel_tl.prompts.sources import stream_prompts
from funnel_tl.results.heads import HeadResult
from funnel_tl.testing.reference import reference_gains, seed_reference

# The same float32 per-token norms in both runs, summed per prompt over rows of batches of other
# padded widths (batches form within a chunk): the sums differ by float32 reduction order only
# (~1e-7 relative measured), never by a token more or less.
CHUNKED = 1e-6
# Against the seed's HF hooks, one prompt at a time: the tolerance of tests/test_gains.py.
RELATIVE = 1e-4

WORDS = "the quick brown fox jumps over a lazy dog near river bank and keeps running".split()


def corpus(n: int, longest_last: bool = True) -> list[str]:
    """``n`` prompts of 2 to 9 words (~3 tokens a word); with ``longest_last`` the two last of 12 and
    16 words, so the position buckets of a chunked run must grow past the first chunk's."""
    lengths = [2 + (5 * i) % 8 for i in range(n)]
    if longest_last:
        lengths[-2:] = [12, 16]
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(length)) for i, length in enumerate(lengths)]


def assert_same_sums(chunked: GainResult, whole: GainResult) -> None:
    np.testing.assert_array_equal(chunked.n_tokens, whole.n_tokens)
    for component in ("attn", "mlp", "block"):
        np.testing.assert_allclose(chunked.out_sums[component], whole.out_sums[component], rtol=CHUNKED)
        np.testing.assert_allclose(chunked.in_sums[component], whole.in_sums[component], rtol=CHUNKED)
        np.testing.assert_allclose(chunked.gains(component), whole.gains(component), rtol=CHUNKED)


@pytest.mark.parametrize("arch", ["neox-parallel", "llama-gqa"])
def test_chunked_equals_whole_with_positions_drop_first_and_truncation(arch, bridge):
    prompts = corpus(23)
    settings = dict(definition="residual", batch_size=3, drop_first=1, by_position=True, max_tokens_per_prompt=30)
    whole = measure_gains(bridge(arch), prompts, chunk_size=1000, **settings)
    chunked = measure_gains(bridge(arch), prompts, chunk_size=5, **settings)
    assert_same_sums(chunked, whole)
    assert chunked.prompts == whole.prompts == tuple(prompts)
    # Buckets: the whole corpus's, grown past the first chunk's (its prompts are all shorter).
    np.testing.assert_array_equal(chunked.positions.edges, whole.positions.edges)
    assert len(whole.positions.edges) > 17  # reaches the 16-31 bucket and beyond
    np.testing.assert_array_equal(chunked.positions.n_tokens, whole.positions.n_tokens)
    for component in ("attn", "mlp", "block"):
        np.testing.assert_allclose(
            chunked.positions.out_sums[component], whole.positions.out_sums[component], rtol=CHUNKED, atol=0
        )
        np.testing.assert_allclose(
            chunked.position_gains(component), whole.position_gains(component), rtol=CHUNKED
        )  # NaN (no prompt reaches the bucket) in the same cells
    # The provenance describes the whole corpus, not a chunk: truncation by corpus index.
    for key in ("prompts_sha256", "n_tokens_total", "truncation", "drop_first"):
        assert chunked.provenance[key] == whole.provenance[key], key
    assert (
        max(chunked.provenance["truncation"]["truncated_prompts"]) >= 5
    )  # cut in a later chunk, named by corpus index
    assert chunked.provenance["chunk_size"] == 5 and "chunk_size" not in whole.provenance
    assert chunked.provenance["executor"] == whole.provenance["executor"]


def test_chunked_equals_the_seeds_method(bridge, hf_model, tokenizer):
    prompts = corpus(11, longest_last=False)
    result = measure_gains(bridge("gpt2"), prompts, chunk_size=4, batch_size=2)
    reference = reference_gains(seed_reference(hf_model("gpt2"), tokenizer, prompts), "seed")
    for component in ("attn", "mlp", "block"):
        np.testing.assert_allclose(result.gains(component), reference[component], rtol=RELATIVE)


def test_heads_chunked_equal_whole(bridge):
    prompts = corpus(13)
    settings = dict(batch_size=2, by_position=True, drop_first=1)
    whole = head_gains(bridge("neox-serial"), prompts, chunk_size=100, **settings)
    chunked = head_gains(bridge("neox-serial"), prompts, chunk_size=4, **settings)
    np.testing.assert_array_equal(chunked.n_tokens, whole.n_tokens)
    for name in ("head_norm_sums", "attn_out_sums", "in_sums"):
        np.testing.assert_allclose(getattr(chunked, name), getattr(whole, name), rtol=CHUNKED)
    # Signed projections can sum to near 0: relative to the largest, as the engine's check does.
    scale = np.abs(whole.head_projection_sums).max()
    np.testing.assert_allclose(chunked.head_projection_sums, whole.head_projection_sums, rtol=0, atol=CHUNKED * scale)
    np.testing.assert_array_equal(chunked.positions.edges, whole.positions.edges)
    np.testing.assert_allclose(chunked.positions.head_norm_sums, whole.positions.head_norm_sums, rtol=CHUNKED)


class CountingTokenizer:
    """The model's tokenizer, recording how many prompts each call got."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, []
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id

    def __call__(self, prompts):
        self.calls.append(len(prompts))
        return self.tokenizer(prompts)


def test_prompts_are_read_and_tokenized_a_chunk_at_a_time(bridge, tokenizer, monkeypatch):
    """What is held at once is bounded by the chunk, not the corpus: the tokenizer sees at most
    ``chunk_size`` prompts per call, and when a batch is measured, no more than the chunk after its
    own has been read from the (lazy) source."""
    from funnel_tl.measure import gains

    chunk, n = 4, 30
    pulled = []

    def source():
        for number, text in enumerate(corpus(n)):
            pulled.append(number)
            yield text

    behind = []
    start = gains.GainSums.start

    def spy(self, batch, *args, **kwargs):
        own_chunk = min(batch.indices) // chunk
        behind.append(len(pulled) - (own_chunk + 1) * chunk)  # prompts read beyond the batch's own chunk
        return start(self, batch, *args, **kwargs)

    monkeypatch.setattr(gains.GainSums, "start", spy)
    counting = CountingTokenizer(tokenizer)
    result = measure_gains(bridge("gpt2"), source(), chunk_size=chunk, batch_size=2, tokenizer=counting)
    assert result.n_prompts == n and sum(counting.calls) == n
    assert max(counting.calls) == chunk
    assert max(behind) <= chunk  # the one chunk read ahead (the engine looks one batch ahead)
    assert len(behind) > n // 2  # the spy saw the run's batches (and the fast executor's check)


def peak_traced_bytes(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
def test_peak_memory_is_flat_in_corpus_size(bridge):
    """Python-heap peak (tracemalloc: token id lists, texts, numpy arrays) of a streamed corpus 4x
    larger stays within a small margin, where measuring it whole grows with it. Deterministic
    allocation counts, not timings."""
    model = bridge("gpt2")
    long_prompt = " ".join(WORDS[:12])  # ~40 tokens: token ids dominate the per-prompt sums

    def measure(n, chunk):
        return lambda: measure_gains(
            model, (long_prompt for _ in range(n)), chunk_size=chunk, batch_size=8, keep_texts=False, progress=False
        )

    small, large = peak_traced_bytes(measure(400, 100)), peak_traced_bytes(measure(1600, 100))
    whole_small, whole_large = peak_traced_bytes(measure(400, 400)), peak_traced_bytes(measure(1600, 1600))
    extra = 1200  # prompts more in the large corpus
    # Guards the test: measured whole, each extra prompt holds its ~40 token ids and their batches
    # (~2,100 bytes measured; token ids alone are ~36 bytes each).
    assert whole_large - whole_small > 1000 * extra, (whole_small, whole_large)
    # Streamed, what grows is only the per-prompt sums: 2 layers x 14 float64 (7 hooks' norms, over
    # all positions and from position 1: funnel_tl.measure.reads) and a count, in arrays of doubling
    # capacity (~310 bytes a prompt measured).
    assert large - small < 500 * extra, (small, large)


def test_results_without_texts_load_report_and_bootstrap(bridge, tmp_path):
    prompts = corpus(9)
    result = measure_gains(bridge("gpt2"), prompts, keep_texts=False, chunk_size=4, by_position=True)
    assert result.prompts is None and result.n_prompts == 9
    path = result.with_intervals(n_resamples=50).save(tmp_path / "results.json")
    data = json.loads(path.read_text())
    assert data["prompts"] == {"sha256": prompts_sha256(prompts), "n_prompts": 9, "texts": None}
    loaded = GainResult.load(path)
    assert loaded.prompts is None and loaded.n_prompts == 9
    np.testing.assert_allclose(loaded.attn_gains, result.attn_gains, rtol=1e-12)
    again = loaded.with_intervals(n_resamples=50)
    np.testing.assert_allclose(again.intervals.attn, result.with_intervals(n_resamples=50).intervals.attn)
    # A subset is no longer the measured set: its fingerprint is dropped, not carried over wrongly.
    assert loaded.subset([0, 1]).to_dict()["prompts"]["sha256"] is None
    assert loaded.without_first(3).n_prompts == 9

    heads = head_gains(bridge("gpt2"), prompts, keep_texts=False, chunk_size=4)
    heads_loaded = HeadResult.load(heads.save(tmp_path / "heads.json"))
    assert heads_loaded.prompts is None and heads_loaded.n_prompts == 9
    np.testing.assert_allclose(heads_loaded.head_gains, heads.head_gains, rtol=1e-12)


def test_prompt_digest_equals_the_sha_of_the_list():
    texts = ["plain", 'quotes " and \\ backslash', "ünïcödé ✓", "line\nbreak"]
    digest = PromptDigest()
    for text in texts:
        digest.add(text)
    assert digest.hexdigest() == prompts_sha256(texts)
    assert PromptDigest().hexdigest() == prompts_sha256([])


def test_stream_prompts_is_lazy_and_records_the_cap(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("one\ntwo\nthree\n{bad\n", encoding="utf-8")
    texts, record = stream_prompts(str(path), max_prompts=2)
    assert record["n_prompts"] is None  # nothing counted before it is read
    assert list(texts) == ["one", "two"]
    assert record["n_prompts"] == 2 and record["more_available"]
    with pytest.raises(Exception, match="no prompts"):
        (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
        stream_prompts(str(tmp_path / "empty.txt"))


def test_cli_streams_a_corpus_in_chunks(checkpoints, tmp_path, monkeypatch, capsys):
    """`funnel-tl run` hands the measurement an iterator over the file, measured in chunks, with the
    numbers of a whole in-memory run; --no-prompt-texts files load in `report`."""
    from funnel_tl.cli.entry import main
    from funnel_tl.measure import gains, streaming

    prompts = corpus(14)
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in prompts), encoding="utf-8")
    given = []
    measure = gains.measure_gains

    def spy(model, source, **kwargs):
        given.append(source)
        return measure(model, source, **kwargs)

    monkeypatch.setattr(gains, "measure_gains", spy)
    monkeypatch.setattr(streaming, "CHUNK_PROMPTS", 4)
    out = tmp_path / "out"
    assert (
        main(
            [
                "run",
                "--model",
                str(checkpoints["gpt2"]),
                "--prompts",
                str(path),
                "--max-prompts",
                "12",
                "--no-prompt-texts",
                "--by-position",
                "--bootstrap",
                "100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert not isinstance(given[0], (list, tuple))  # read as it is measured, not loaded first
    assert "Measured the first 12 prompts" in capsys.readouterr().out
    data = json.loads((out / "results.json").read_text())
    assert data["prompts"] == {"sha256": prompts_sha256(prompts[:12]), "n_prompts": 12, "texts": None}
    assert data["provenance"]["chunk_size"] == 4 and data["provenance"]["prompt_source"]["n_prompts"] == 12
    whole = measure(load_gpt2(checkpoints), prompts[:12], chunk_size=100)
    np.testing.assert_allclose(data["attention"]["gains"], whole.attn_gains, rtol=CHUNKED)
    np.testing.assert_allclose(data["mlp"]["gains"], whole.mlp_gains, rtol=CHUNKED)
    assert main(["report", str(out)]) == 0


def load_gpt2(checkpoints):
    from funnel_tl import load_model

    return load_model(str(checkpoints["gpt2"]), device="cpu", dtype="float32")


def test_compare_resumes_a_results_file_without_texts(checkpoints, tmp_path):
    """A text-less results.json still names its prompts by sha256, which is what a sweep resumes by."""
    import importlib
    from dataclasses import replace

    compare = importlib.import_module("funnel_tl.sweep").compare
    options = dict(device="cpu", dtype="float32", batch_size=8, progress=False, bootstrap=0)
    out = tmp_path / "sweep"
    first = compare([str(checkpoints["gpt2"])], out=out, **options)
    (path,) = out.glob("*/results.json")
    stripped = replace(GainResult.load(path), prompts=None)
    stripped.save(path)
    assert json.loads(path.read_text())["prompts"]["texts"] is None
    again = compare([str(checkpoints["gpt2"])], out=out, **options)
    assert [row.resumed for row in again.rows] == [True]
    np.testing.assert_allclose(
        again.results[again.rows[0].model].attn_gains, first.results[first.rows[0].model].attn_gains, rtol=1e-12
    )


def test_a_bad_line_of_a_streamed_file_fails_before_anything_is_read_for_measuring(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"text": "fine"}\n' * 5 + '{"text": null}\n', encoding="utf-8")
    with pytest.raises(Exception, match=r"corpus.jsonl:6"):
        stream_prompts(str(path))
    texts, record = stream_prompts(str(path), max_prompts=5)  # the bad line lies beyond the cap
    assert list(texts) == ["fine"] * 5 and record["more_available"]


@pytest.mark.parametrize("n, chunk", [(12, 4), (13, 4), (3, 4)])
def test_the_progress_bar_learns_the_number_of_batches_with_the_last_chunk(bridge, n, chunk):
    """A prompt list (or a set such as "varied") gets a total, so an ETA, once its last chunk is
    batched: the number of batches the run then yields, even where the chunks divide it evenly."""
    stream = TokenStream(bridge("gpt2"), corpus(n), MeasureOptions(batch_size=3, chunk_size=chunk))
    totals = [stream.known_total() for _ in stream.batches()]  # asked as the engine asks, per batch
    sizes = [min(chunk, n - start) for start in range(0, n, chunk)]  # prompts per chunk
    n_batches = sum(-(-size // 3) for size in sizes)
    last = -(-sizes[-1] // 3)  # the last chunk's batches
    assert totals == [None] * (n_batches - last) + [n_batches] * last  # one chunk (n=3): known at once
