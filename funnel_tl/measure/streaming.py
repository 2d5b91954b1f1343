"""Prompts streamed into batches a chunk at a time: memory flat in the size of the corpus.

``measure_gains`` and ``head_gains`` read their prompts through ``TokenStream``: ``CHUNK_PROMPTS``
prompts are read (lazily from a ``.txt``/``.jsonl`` file, a dataset or any iterable:
``prompts.iter_prompts``), tokenized in one tokenizer call, checked, cut into length-sorted
batches (``prompts.make_batches``, within the chunk), measured, and dropped before the next chunk
is read. What outlives a chunk is per prompt and small: the measurement's sums and token counts
(the product), the running fingerprint of the prompt texts, and the texts themselves unless
``keep_texts=False``. Token ids never outlive their chunk, so a corpus of any length is measured
with the memory of one chunk's tokens.

Batches are sorted by length within a chunk rather than over the whole corpus: a corpus larger
than one chunk pads a little more, and its sums are added in different batches, which changes a
number by float32 rounding only (tests hold chunked and whole runs to 1e-6). A corpus within one
chunk (every prompt set of the seed's size) is batched exactly as before.

Checks that need a prompt's tokens (context length, ``drop_first``) run chunk by chunk, so a bad
prompt in a late chunk fails the run after the earlier chunks were measured; the error names the
prompt by its place in the whole corpus.

>>> digest = PromptDigest()
>>> for text in ["a prompt", "another"]:
...     digest.add(text)
>>> from funnel_tl.prompts.sets import prompts_sha256
>>> digest.hexdigest() == prompts_sha256(["a prompt", "another"])
True
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from funnel_tl.errors import FunnelError
from funnel_tl.measure.engine import resolve_batch_size
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.measure.positions import grown
from funnel_tl.models.identity import model_name, tokenizer_of
from funnel_tl.prompts.sets import iter_prompts
from funnel_tl.prompts.tokens import (
    Batch,
    check_tokens_left,
    make_batches,
    pad_token_id,
    tokenize,
    truncation_limit,
)

# Prompts read, tokenized and batched at a time. Token ids in Python lists cost ~36 bytes each: a
# chunk of 4,096 prompts of 2,048 tokens holds ~300 MB at most, and small corpora (every
# prompt set up to this size) are batched exactly as a whole.
CHUNK_PROMPTS = 4096


class PromptDigest:
    """``prompts.prompts_sha256`` computed one prompt at a time (no list of the texts needed)."""

    def __init__(self):
        self._hash = hashlib.sha256(b"[")
        self.count = 0

    def add(self, text: str) -> None:
        # json.dumps of a list writes "[" + ", ".join(items) + "]": the same bytes, fed piecewise.
        self._hash.update(((", " if self.count else "") + json.dumps(text, ensure_ascii=False)).encode("utf-8"))
        self.count += 1

    def hexdigest(self) -> str:
        final = self._hash.copy()
        final.update(b"]")
        return final.hexdigest()


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to ``size`` consecutive items; reads no item before its chunk is asked for."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def chunks_and_last(items: Iterable, size: int) -> Iterator[tuple[list, bool]]:
    """``chunked``'s lists, each with whether it is the last: a full chunk reads one item past
    itself to tell (a short one is the last).

    >>> [(chunk, last) for chunk, last in chunks_and_last(range(5), 2)]
    [([0, 1], False), ([2, 3], False), ([4], True)]
    >>> list(chunks_and_last(range(4), 2))[-1]
    ([2, 3], True)
    """
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        following = list(itertools.islice(iterator, 1)) if len(chunk) == size else []
        yield chunk, not following
        iterator = itertools.chain(following, iterator)


class TokenStream:
    """The batches of a measurement, read chunk by chunk from ``prompts``; what it saw, for the provenance.

    Iterate ``batches()`` once: each batch carries its prompts' places in the whole set. Afterwards
    (or as it goes) ``n_prompts``, ``texts`` (None with ``keep_texts=False``), ``sha256``,
    ``n_tokens_total``, ``padding_fraction``, ``batch_size`` and ``truncation`` describe every
    prompt read. ``options``: the measurement's, as checked (``drop_first``, ``batch_size``,
    ``max_tokens_per_prompt``, ``chunk_size``: prompts per chunk, ``CHUNK_PROMPTS`` by default,
    ``keep_texts``).
    ``on_chunk(n_prompts_so_far, longest_in_chunk)`` is called before a chunk's batches are
    yielded (position sums grow their arrays there).
    """

    def __init__(
        self,
        model,
        prompts,
        options: MeasureOptions,
        tokenizer=None,
        device=None,
        on_chunk: Callable[[int, int], None] | None = None,
    ):
        self.model, self.prompts, self.drop_first = model, prompts, options.drop_first
        self.tokenizer = tokenizer if tokenizer is not None else tokenizer_of(model)
        self.n_ctx = getattr(model.cfg, "n_ctx", None)
        self.limit = truncation_limit(options.max_tokens_per_prompt, self.n_ctx)  # before any prompt is read
        self.requested_batch_size, self.device = options.batch_size, device
        self.chunk_size = CHUNK_PROMPTS if options.chunk_size is None else options.chunk_size
        self.on_chunk = on_chunk
        self.pad_id = pad_token_id(self.tokenizer)
        self.texts: list[str] | None = [] if options.keep_texts else None
        self.digest = PromptDigest()
        self.n_tokens_total = self.real = self.padded = 0
        self.batch_sizes: list[int] = []
        self.truncation: dict = {}
        # Batches of the chunks batched so far; their number is the run's once the last is batched.
        self.n_batches_seen = 0
        self.n_batches: int | None = None

    @property
    def n_prompts(self) -> int:
        return self.digest.count

    @property
    def sha256(self) -> str:
        return self.digest.hexdigest()

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real / self.padded if self.padded else 0.0

    @property
    def batch_size(self) -> int:
        """The batch size recorded in the provenance: the largest any chunk used."""
        return max(self.batch_sizes) if self.batch_sizes else 0

    def known_total(self) -> int | None:
        """The run's number of batches, known once its last chunk is batched (at once for every
        prompt set up to ``CHUNK_PROMPTS``); None before, as for a streamed corpus."""
        return self.n_batches

    def batches(self) -> Iterator[Batch]:
        for chunk, last in chunks_and_last(iter_prompts(self.prompts), self.chunk_size):
            yield from self._chunk_batches(chunk, last)
        if not self.n_prompts:
            source = str(self.prompts) if isinstance(self.prompts, (str, os.PathLike)) else "the prompt list"
            raise FunnelError(f"no prompts in {source}: give at least one non-blank prompt")

    def _chunk_batches(self, chunk: list[str], last: bool = False) -> Iterator[Batch]:
        offset = self.n_prompts
        cut: dict = {}
        token_ids = tokenize(
            self.tokenizer,
            chunk,
            n_ctx=self.n_ctx,
            model_name=model_name(self.model),
            max_tokens=self.limit,
            truncation=cut,
            first_index=offset,
            d_vocab=getattr(self.model.cfg, "d_vocab", None),
        )
        check_tokens_left(token_ids, self.drop_first, first_index=offset)
        self._merge_truncation(cut)
        for text in chunk:
            self.digest.add(text)
        if self.texts is not None:
            self.texts.extend(chunk)
        self.n_tokens_total += sum(map(len, token_ids))
        if self.on_chunk is not None:
            self.on_chunk(self.n_prompts, max(map(len, token_ids)))
        size = resolve_batch_size(self.requested_batch_size, self.model, token_ids, self.device)
        self.batch_sizes.append(size)
        self.n_batches_seen += -(-len(token_ids) // size)  # make_batches' batches: ceil(prompts / size)
        if last:
            self.n_batches = self.n_batches_seen
        for batch in make_batches(token_ids, size, pad_token_id=self.pad_id):
            self.real += int(batch.attention_mask.sum())
            self.padded += batch.attention_mask.numel()
            yield Batch(
                indices=[offset + i for i in batch.indices], tokens=batch.tokens, attention_mask=batch.attention_mask
            )

    def _merge_truncation(self, cut: dict) -> None:
        if not cut:
            return
        record, seen = cut["truncation"], self.truncation.get("truncation")
        if seen is None:
            self.truncation = {"truncation": dict(record, truncated_prompts=list(record["truncated_prompts"]))}
            return
        seen["n_truncated"] += record["n_truncated"]
        seen["truncated_prompts"].extend(record["truncated_prompts"])
        seen["tokens_dropped"] += record["tokens_dropped"]


class PerPrompt:
    """Per-prompt arrays ``[prompt, ...]`` filled batch by batch, growing as a streamed corpus is read."""

    def __init__(self, shapes: dict[str, tuple], dtype=np.float64):
        self.arrays = {key: np.zeros((0, *shape), dtype=dtype) for key, shape in shapes.items()}
        self.n_rows = 0

    def put(self, indices: Sequence[int], values: dict[str, np.ndarray]) -> None:
        self.n_rows = max(self.n_rows, max(indices) + 1)
        for key, value in values.items():
            self.arrays[key] = grown(self.arrays[key], self.n_rows)
            self.arrays[key][indices] = value

    def result(self, n_rows: int) -> dict[str, np.ndarray]:
        """Each array cut to the ``n_rows`` prompts read (capacity beyond it is unused)."""
        return {key: grown(array, n_rows)[:n_rows] for key, array in self.arrays.items()}
