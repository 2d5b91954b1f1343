"""Data parallel over processes launched by ``torchrun``: prompts spread over ranks, results on rank 0.

``torchrun --nproc-per-node N -m funnel_tl run ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` and a rendezvous in the environment (Slurm's ``srun`` starts
``torchrun`` on every node the same way). ``session`` joins them into one ``torch.distributed``
process group — NCCL when they measure on GPUs, gloo on the CPU — and leaves it on exit; a
process started without torchrun is a world of one and nothing here communicates.

``measure`` runs a measurement (``measure_gains`` or ``head_gains``, the public functions,
unchanged) on each rank's share of the prompts: whole length-sorted batches, as the measurement
itself would form them, dealt to ranks by padded tokens (``shard_by_tokens``), so every rank does
about the same compute and every prompt is measured in the very batch a single process would put
it in. Each rank then sends its per-prompt sums and token counts — a few kilobytes — to rank 0
(``gather_object``), which puts them back in the caller's prompt order: the same result as one
process, the provenance saying how many processes made it. Only rank 0 gets a result; only it
prints and writes.

Failures: every step that can fail on one rank alone (loading, measuring) runs inside
``together``, which ends with a collective check of every rank's outcome, so if one rank fails,
every rank raises the same one-line ``FunnelError`` naming it, instead of the others waiting
forever at the next collective. A process that dies outright (killed, segfault) is torchrun's
to handle: it stops the other ranks of the job.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from funnel_tl.cli import environment
from funnel_tl.errors import FunnelError, one_line
from funnel_tl.measure.gains import prepare_tokens
from funnel_tl.measure.options import MeasureOptions
from funnel_tl.prompts.sets import prompts_sha256
from funnel_tl.results.gains import GainResult
from funnel_tl.results.heads import HeadResult


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a run: ``rank`` of ``size``."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0: the one process that prints and writes."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def _item(get: Callable[[Any], dict], key) -> Callable[[Any], np.ndarray]:
    """``lambda part: get(part)[key]`` with ``key`` bound now: a comprehension's lambdas would
    otherwise all read its last key (and mypy cannot type a lambda's default argument)."""
    return lambda part: get(part)[key]


def world() -> World:
    """The current process group as a ``World``; a world of one outside ``session``.

    >>> world()
    World(rank=0, size=1, local_rank=0, backend=None)
    """
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        backend=str(dist.get_backend()),
    )


def launched_by_torchrun() -> bool:
    """Whether this process is one of several that torchrun (or srun, or mp.spawn with the same variables) started."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def session(device: str = "auto"):
    """Join the process group torchrun described, for the duration of a command; yield the ``World``.

    ``device``: the CLI's ``--device``. GPUs (``auto`` with CUDA present, or ``cuda``) use NCCL,
    each rank on the GPU of its ``LOCAL_RANK``; the CPU uses gloo. Outside torchrun, or when a
    group is already up (a caller's own), nothing is set up or torn down.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield world()
        return
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if on_gpu:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise FunnelError(
                f"rank with LOCAL_RANK {local_rank} has no GPU of its own "
                f"({torch.cuda.device_count()} visible): start at most that many processes per node"
            )
        torch.cuda.set_device(local_rank)  # "cuda" now means this rank's GPU, for loading and NCCL alike
    # How long a collective waits for the slowest rank (default a day; a bad value: one line naming it).
    minutes = environment.value("FUNNEL_TL_TIMEOUT_MINUTES")
    dist.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(minutes=minutes))
    try:
        yield world()
    finally:
        # Leave together: ranks other than 0 return as soon as their share is gathered, and a rank
        # that tears gloo down while rank 0 still holds its connections was seen to abort at exit
        # ("terminate called without an active exception"). A rank that died cannot hang this:
        # torchrun ends the other ranks when one fails.
        dist.barrier()
        dist.destroy_process_group()


def check_all(current: World, error: BaseException | None) -> None:
    """Collective: tell every rank whether each succeeded; if any failed, raise on every rank.

    The error names the first failed rank (``rank 1 of 2 failed: ...``), or is the message itself
    when every rank failed alike (a bad model name fails everywhere the same way).
    """
    if not current.distributed:
        if error is not None:
            raise error
        return
    outcomes: list[str | None] = [None] * current.size
    dist.all_gather_object(outcomes, None if error is None else one_line(error))
    failed = [(rank, message) for rank, message in enumerate(outcomes) if message is not None]
    if not failed:
        return
    if len(failed) == current.size and len({message for _, message in failed}) == 1:
        raise FunnelError(failed[0][1]) from error
    rank, message = failed[0]
    more = f" (and {len(failed) - 1} more rank{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
    raise FunnelError(f"rank {rank} of {current.size} failed{more}: {message}") from error


@contextlib.contextmanager
def together(current: World):
    """Run a step that may fail on some ranks only; afterwards every rank knows, and all fail as one.

    Every rank must enter it (it ends with a collective). ``KeyboardInterrupt`` is not caught.
    """
    error = None
    try:
        yield
    except Exception as caught:  # any failure, reported to the other ranks rather than left to hang them
        error = caught
    check_all(current, error)


def shard_by_tokens(lengths: Sequence[int], n_ranks: int, batch_size: int | Any = 1) -> list[list[int]]:
    """Each rank's prompt indices, ascending: whole length-sorted batches, balanced by padded tokens.

    Prompts are sorted by length and cut into batches of ``batch_size`` as ``prompts.make_batches``
    does; batches, costliest first, go to the rank with the fewest padded tokens so far
    (ties: the lower rank). A rank's share, measured on its own, then forms exactly these batches,
    so data parallel changes no batch. A non-integer ``batch_size`` (chosen by the measurement)
    deals single prompts. Deterministic: every rank computes the same shares.

    >>> shard_by_tokens([5, 1, 9, 2, 3, 8], 2, batch_size=2)
    [[2, 5], [0, 1, 3, 4]]
    """
    size = batch_size if isinstance(batch_size, int) and batch_size >= 1 else 1
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])  # stable, as make_batches sorts
    batches = [order[start : start + size] for start in range(0, len(order), size)]
    costs = [len(batch) * max(lengths[i] for i in batch) for batch in batches]  # padded tokens
    load = [0] * n_ranks
    shares: list[list[int]] = [[] for _ in range(n_ranks)]
    for number in sorted(range(len(batches)), key=lambda b: (-costs[b], b)):
        rank = min(range(n_ranks), key=lambda r: (load[r], r))
        load[rank] += costs[number]
        shares[rank].extend(batches[number])
    return [sorted(share) for share in shares]


def gather_to_main(current: World, value: Any) -> list[Any] | None:
    """Every rank's ``value``, in rank order, on rank 0 (``None`` elsewhere). Small objects only."""
    if not current.distributed:
        return [value]
    received = [None] * current.size if current.main else None
    dist.gather_object(value, received, dst=0)
    return received


def broadcast_from_main(current: World, value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not current.distributed:
        return value
    box = [value if current.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def measure(
    function: Callable,
    model,
    prompts: Sequence[str],
    current: World | None = None,
    *,
    options: MeasureOptions | None = None,
    tokenizer=None,
    **kwargs,
):
    """``function(model, prompts, ...)`` over all ranks; the whole result on rank 0, ``None`` elsewhere.

    In a world of one this is just the call. Every rank must call it with the same prompts and
    settings; each measures the share of the prompts ``shard_by_tokens`` deals it, streaming it.

    Args:
        function: ``measure_gains``, ``head_gains``, ``measure_effects`` or ``component_means``.
        model: the rank's model, on its own device.
        prompts: the whole prompt set, the same on every rank (data parallel takes a list, not a
            stream: the shares are dealt by tokens, so every rank tokenizes every prompt).
        current: this process's ``World``; default ``world()``.
        options: the measurement's ``MeasureOptions``, checked once by the caller; default
            ``MeasureOptions()``.
        tokenizer: the tokenizer to use; default the model's own.
        **kwargs: ``function``'s other keywords (``progress``, ``intervals``...), as they are.

    Returns:
        ``function``'s result over every prompt, in their order, on rank 0; ``None`` on the others.

    >>> from funnel_tl import load_model, measure_gains
    >>> result = measure(measure_gains, load_model("nano-2l", device="cpu"), ["a b", "c d e"])  # doctest: +SKIP
    """
    current = current or world()
    options = options if options is not None else MeasureOptions()
    if not current.distributed:
        return function(model, prompts, options=options, tokenizer=tokenizer, **kwargs)

    with together(current):
        # Every check on all the prompts at once, so an error names a prompt by its place in the
        # caller's list; the token counts also decide the shares.
        truncation: dict = {}
        prompt_list, token_ids, _ = prepare_tokens(model, prompts, options, tokenizer, truncation)
        shares = shard_by_tokens([len(ids) for ids in token_ids], current.size, options.batch_size)
        mine = shares[current.rank]
        part = None
        if mine:
            if not current.main:
                kwargs.setdefault("progress", False)
            try:
                share = [prompt_list[i] for i in mine]
                part = function(model, share, options=options, tokenizer=tokenizer, **kwargs)
            except FunnelError as error:
                raise in_callers_terms(error, mine) from error
    parts = gather_to_main(current, (mine, part))
    if not current.main:
        return None
    assert parts is not None  # gather_to_main gives the main rank every part
    return assemble(parts, prompt_list, truncation)


def in_callers_terms(error: FunnelError, share: Sequence[int]) -> FunnelError:
    """``error`` with "prompt N" (N: a place in this rank's ``share``) renamed to the caller's index.

    A measurement names a prompt by its place in the list it was given, which on a rank is its
    share; the user knows the prompts by their place in their own file.

    >>> in_callers_terms(FunnelError("non-finite activation in m, layer 1, prompt 2, position 5"), [4, 7, 9])
    FunnelError('non-finite activation in m, layer 1, prompt 9, position 5')
    """
    renamed = re.sub(
        r"\bprompt (\d+)\b",
        lambda match: f"prompt {share[int(match.group(1))]}" if int(match.group(1)) < len(share) else match.group(0),
        str(error),
    )
    return FunnelError(renamed)


def _assemble_positions(pieces: Sequence[tuple[np.ndarray, Any]], n_prompts: int):
    """The ranks' sums by position bucket (``by_position``) as one, or None when not measured.

    Each rank's buckets end at its own longest prompt (``positions.bucket_edges``), a prefix of
    the whole set's: the buckets a rank lacks are ones none of its prompts reaches, so they hold 0,
    as in one process.
    """
    sums = [(indices, result.positions) for indices, result in pieces]
    if sums[0][1] is None:
        return None
    edges = max((p.edges for _, p in sums), key=len)
    if any(not np.array_equal(p.edges, edges[: len(p.edges)]) for _, p in sums):
        raise FunnelError("the ranks' position buckets disagree: please report it")
    n_buckets = len(edges) - 1

    def place(get: Callable[[Any], np.ndarray]) -> np.ndarray:
        first = np.asarray(get(sums[0][1]))
        whole = np.zeros((n_prompts,) + first.shape[1:-1] + (n_buckets,), dtype=first.dtype)  # [prompt, ..., bucket]
        for indices, positions in sums:
            part = np.asarray(get(positions))
            whole[indices, ..., : part.shape[-1]] = part
        return whole

    template = sums[0][1]
    if hasattr(template, "out_sums"):  # positions.PositionSums, of a GainResult
        return replace(
            template,
            edges=edges,
            n_tokens=place(lambda p: p.n_tokens),
            intervals=None,
            out_sums={c: place(_item(lambda p: p.out_sums, c)) for c in template.out_sums},
            in_sums={c: place(_item(lambda p: p.in_sums, c)) for c in template.in_sums},
        )
    return replace(
        template,
        edges=edges,
        n_tokens=place(lambda p: p.n_tokens),  # positions.HeadPositionSums
        head_norm_sums=place(lambda p: p.head_norm_sums),
        in_sums=place(lambda p: p.in_sums),
    )


def assemble(parts: Sequence[tuple[list[int], Any]], prompts: Sequence[str], truncation: dict | None = None):
    """One result from each rank's ``(prompt indices, result)``, prompts back in ``prompts``' order.

    Results are ``GainResult`` or ``HeadResult``; every per-prompt array is put back by index, and
    the provenance adds up the shares' token counts and padding and records ``world_size``. A result
    with an ``assembled(pieces, prompts, truncation)`` method (the effects) puts itself together.
    """
    pieces = [(np.asarray(indices, dtype=np.int64), result) for indices, result in parts if result is not None]
    n_prompts = len(prompts)
    covered = np.sort(np.concatenate([indices for indices, _ in pieces]))
    if not np.array_equal(covered, np.arange(n_prompts)):
        raise FunnelError("the ranks' shares do not cover every prompt exactly once: please report it")

    def place(get: Callable[[Any], np.ndarray]) -> np.ndarray:
        first = np.asarray(get(pieces[0][1]))
        whole = np.zeros((n_prompts,) + first.shape[1:], dtype=first.dtype)  # [prompt, ...]
        for indices, result in pieces:
            whole[indices] = get(result)
        return whole

    template = pieces[0][1]
    if hasattr(template, "assembled"):  # a result that puts itself together (effects.ComponentMeans, EffectResult)
        return template.assembled(pieces, prompts, truncation)
    provenance = dict(template.provenance)
    real = sum(result.provenance.get("n_tokens_total", 0) for _, result in pieces)
    padded = sum(
        result.provenance.get("n_tokens_total", 0) / max(1e-12, 1.0 - result.provenance.get("padding_fraction", 0.0))
        for _, result in pieces
    )
    provenance.update(
        {
            "prompts_sha256": prompts_sha256(prompts),
            "n_tokens_total": int(real),
            "padding_fraction": float(1.0 - real / padded) if padded else 0.0,
            "world_size": len(parts),
            "prompts_per_rank": [len(indices) for indices, _ in parts],
        }
    )
    provenance.pop("truncation", None)
    provenance.update(truncation or {})
    kept = tuple(prompts) if template.prompts is not None else None  # keep_texts=False: count and sha256 only
    common = dict(
        prompts=kept,
        n_tokens=place(lambda r: r.n_tokens),
        provenance=provenance,
        positions=_assemble_positions(pieces, n_prompts),
    )
    if isinstance(template, GainResult):
        reads, histograms = template.reads, template.token_histograms
        if reads is not None:  # every role's sums, by prompt as the rest (funnel_tl.measure.reads)
            reads = replace(
                reads,
                sums={role: place(_item(lambda r: r.reads.sums, role)) for role in reads.sums},
                sums_from_1={role: place(_item(lambda r: r.reads.sums_from_1, role)) for role in reads.sums_from_1},
                n_tokens_from_1=place(lambda r: r.reads.n_tokens_from_1),
            )
        if histograms is not None:  # counts of tokens: they add up over the shares exactly
            histograms = replace(histograms, counts=sum(result.token_histograms.counts for _, result in pieces))
        return replace(
            template,
            **common,
            intervals=None,
            out_sums={c: place(_item(lambda r: r.out_sums, c)) for c in template.out_sums},
            in_sums={c: place(_item(lambda r: r.in_sums, c)) for c in template.in_sums},
            reads=reads,
            token_histograms=histograms,
        )
    if isinstance(template, HeadResult):
        return replace(
            template,
            **common,
            head_norm_sums=place(lambda r: r.head_norm_sums),
            head_projection_sums=place(lambda r: r.head_projection_sums),
            attn_out_sums=place(lambda r: r.attn_out_sums),
            in_sums=place(lambda r: r.in_sums),
        )
    raise TypeError(f"cannot assemble results of type {type(template).__name__}")
