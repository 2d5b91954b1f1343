"""Prompt sets, tokenization and padded batches.

Tokens are exactly what the model's own HuggingFace tokenizer gives for each prompt
(``tokenizer(prompt)``, the seed notebook's way): no BOS is added unless that tokenizer adds one.
Batches are right-padded, so position p of a prompt is position p in its batch row; the attention
mask keeps pad tokens out of the forward pass and out of every statistic.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch

from .errors import FunnelError
from .schema import kind

# The seed notebook's eight prompts, in its order ("same as Pythia-1.4B for comparability").
SEED_PROMPTS: tuple[str, ...] = (
    "The capital of France is Paris, which is known for the Eiffel Tower.",
    "In mathematics, the Pythagorean theorem states that in a right triangle",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Artificial intelligence has made significant progress in recent years",
    "The chemical formula for water is H2O, consisting of two hydrogen atoms",
    "Shakespeare wrote many famous plays including Hamlet and Macbeth",
    "The speed of light in vacuum is approximately 299,792 kilometers per second",
    "Mount Everest is the highest mountain on Earth, located in the Himalayas",
)


# Built-in prompt sets, by the name --prompts and load_prompts take: the seed's eight, and files
# shipped in funnel_tl/prompt_sets (how each was built and its licence: prompt_sets/README.md).
PROMPT_SETS: dict[str, str] = {
    "seed": "the seed notebook's 8 one-sentence prompts (~110 tokens); the default, for parity with the notebook "
            "and its Pythia-1.4B reference, measured on them",
    "varied": "300 passages of varied English (~24,000 tokens), read offline: The Devil's Dictionary (120, "
              "public domain), the Jargon File (120, public domain), Python documentation held out from the "
              "bundled models' training (60, PSF License)",
}
PROMPT_SET_DIR = Path(__file__).parent / "prompt_sets"

# How each prompt-file extension is read; anything else is refused rather than guessed at.
FILE_FORMATS = ('.txt (one prompt per line), .jsonl (one {"text": "..."} object per line) or '
                '.json (a list of strings, or of {"text": "..."} objects)')
WHAT_TO_PASS = "a built-in set ('seed', 'varied'), a .txt, .jsonl or .json prompt file, or a list of prompt strings"


def load_prompts(spec: str | os.PathLike | Sequence[str] = "seed") -> list[str]:
    """Return a list of prompts from a built-in set, a prompt file, or a sequence of strings.

    Built-in sets (``PROMPT_SETS``): ``"seed"``, the seed notebook's eight prompts (the default),
    and ``"varied"``, 300 passages of varied English shipped with the package (read offline).

    Files are read as strict UTF-8 (a leading byte-order mark is dropped) and by extension:
    ``.txt`` one prompt per non-blank line (stripped); ``.jsonl`` one object per non-blank line
    with a ``"text"`` string; ``.json`` a list of strings or of such objects. Every prompt must
    hold more than whitespace. Anything else is a ``FunnelError`` naming the file and line.

    >>> load_prompts("seed")[0]
    'The capital of France is Paris, which is known for the Eiffel Tower.'
    >>> len(load_prompts("varied"))
    300
    >>> load_prompts(["a prompt", "another"])
    ['a prompt', 'another']
    """
    prompts = list(iter_prompts(spec))
    if not prompts:
        source = str(spec) if isinstance(spec, (str, os.PathLike)) else "the prompt list"
        raise FunnelError(f"no prompts in {source}: give at least one non-blank prompt")
    return prompts


def iter_prompts(spec: str | os.PathLike | Sequence[str] = "seed") -> Iterator[str]:
    """The prompts of ``load_prompts(spec)``, checked the same way, one at a time.

    ``.txt`` and ``.jsonl`` files are read line by line as the prompts are taken, so a caller that
    stops early (``--max-prompts``) reads no further; an empty source yields nothing.
    """
    if isinstance(spec, str) and spec == "seed":
        yield from SEED_PROMPTS
        return
    if isinstance(spec, str) and spec in PROMPT_SETS:
        spec = PROMPT_SET_DIR / f"{spec}.jsonl"
    if isinstance(spec, (str, os.PathLike)):
        records = iter_prompt_file(Path(spec))
    else:
        records = _iter_sequence(spec)
    for where, text in records:
        yield _checked(text, where)


def iter_prompt_file(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """``(where, record)`` for each record of a prompt file, read lazily where the format allows.

    ``where`` is ``"FILE:LINE"`` (``"FILE[INDEX]"`` for ``.json``), for messages; a record is what
    the file holds for one prompt, checked by ``load_prompts`` to be a non-empty string.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        if path.is_dir():
            raise FunnelError(f"{path} is a folder, not a prompt file: give {WHAT_TO_PASS}")
        # A string with spaces or no extension reads as a prompt given where a file was expected;
        # "data.csv" reads as a file name, for which the advice to put it in a list is wrong.
        looks_like_text = not suffix or any(character.isspace() for character in str(path))
        if suffix not in (".txt", ".jsonl", ".json") and not looks_like_text:
            raise FunnelError(f"prompt file not found: {path}; prompt files are {FILE_FORMATS}")
        if suffix not in (".txt", ".jsonl", ".json"):
            shown = str(path) if len(str(path)) <= 40 else str(path)[:37] + "..."
            raise FunnelError(f"prompt file not found: {shown!r}; prompts are {WHAT_TO_PASS}: to measure "
                              f"one prompt, pass it in a list, [{shown!r}], or on the command line write it to a .txt file")
        raise FunnelError(f"prompt file not found: {path} (give {WHAT_TO_PASS})")
    readers = {".txt": _txt_records, ".jsonl": _jsonl_records, ".json": _json_records}
    if suffix not in readers:
        raise FunnelError(f"{path}: cannot tell how to read a {suffix or 'extensionless'} file: "
                          f"save it as {FILE_FORMATS}")
    return readers[suffix](path)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 file, one at a time; any decoding or reading failure is a FunnelError."""
    number = 0
    try:
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if number == 1:
                    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
                        raise FunnelError(f"{path} is UTF-16, not UTF-8: save it as UTF-8")
                    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark is not text
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    raise FunnelError(f"{path}:{number} is not valid UTF-8 (byte {error.start + 1} of the line): "
                                      "save the file as UTF-8 text") from None
                if "\x00" in line:
                    raise FunnelError(f"{path}:{number} holds a NUL byte: is it a binary file? give a text file")
                yield number, line.rstrip("\r\n")
    except OSError as error:
        raise FunnelError(f"cannot read prompt file {path}: {error.strerror or error}") from None


def _txt_records(path: Path) -> Iterator[tuple[str, object]]:
    for number, line in _lines(path):
        if line.strip():
            yield f"{path}:{number}", line.strip()


def _jsonl_records(path: Path) -> Iterator[tuple[str, object]]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise FunnelError(f'{path}:{number}: not JSON ({error.msg}): expected an object with a "text" '
                              "field on each line") from None
        yield f"{path}:{number}", _text_field(record, f"{path}:{number}")


def _json_records(path: Path) -> Iterator[tuple[str, object]]:
    text = "\n".join(line for _, line in _lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise FunnelError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): expected a list of "
                          "prompt strings") from None
    if not isinstance(data, list):
        raise FunnelError(f'{path} holds a JSON {type(data).__name__}: expected a list of strings or of '
                          '{"text": "..."} objects')
    for index, record in enumerate(data):
        where = f"{path}[{index}]"
        yield where, _text_field(record, where) if isinstance(record, dict) else record


def _text_field(record: object, where: str) -> object:
    if not isinstance(record, dict) or "text" not in record:
        raise FunnelError(f'{where}: expected a JSON object with a "text" field, got {kind(record)}')
    return record["text"]


def _iter_sequence(spec) -> Iterator[tuple[str, object]]:
    if isinstance(spec, (bytes, bytearray)) or hasattr(spec, "shape") or isinstance(spec, (dict, set, frozenset)) \
            or not isinstance(spec, Iterable):
        what = "a token tensor" if hasattr(spec, "shape") else f"a {type(spec).__name__}"
        raise FunnelError(f"prompts must be {WHAT_TO_PASS}, got {what}: pass the prompt texts; they are "
                          "tokenized with the model's own tokenizer")
    for index, item in enumerate(spec):
        yield f"prompt {index}", item


def _checked(text: object, where: str) -> str:
    if not isinstance(text, str):
        raise FunnelError(f"{where}: a prompt must be a string, got {kind(text)}")
    if not text.strip():
        raise FunnelError(f"{where}: the prompt is empty or only whitespace: remove it")
    return check_unicode(text, where)


def check_unicode(text: str, where: str) -> str:
    r"""``text`` if it is valid Unicode; a lone surrogate (JSON's ``"\ud800"`` decodes to one, and no
    tokenizer or UTF-8 file can hold it) is a FunnelError naming ``where`` the prompt is.

    >>> check_unicode("caf\u00e9", "prompt 0")
    'café'
    >>> check_unicode("bad " + chr(0xD800), "prompts.json[3]")
    Traceback (most recent call last):
    funnel_tl.errors.FunnelError: prompts.json[3]: the prompt holds invalid Unicode (a lone surrogate \ud800 at character 4): fix the text or remove the prompt
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise FunnelError(f"{where}: the prompt holds invalid Unicode (a lone surrogate "
                          f"\\u{ord(text[error.start]):04x} at character {error.start}): fix the text or remove "
                          "the prompt") from None
    return text


def prompts_sha256(prompts: Sequence[str]) -> str:
    """A stable fingerprint of a prompt set (order matters), recorded in every results file."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()


def dropped_phrase(drop_first: int) -> str:
    """How titles and summaries say that ``drop_first`` leading positions were left out.

    >>> dropped_phrase(1), dropped_phrase(4)
    ('first position dropped', 'first 4 positions dropped')
    """
    return "first position dropped" if drop_first == 1 else f"first {drop_first} positions dropped"


def check_drop_first(drop_first) -> None:
    """``drop_first`` must be a whole number of positions, 0 or more (checked before any prompt is read)."""
    if isinstance(drop_first, bool) or not isinstance(drop_first, int) or drop_first < 0:
        raise FunnelError(f"drop_first must be an integer, 0 or more, got {drop_first!r}")


def check_tokens_left(token_ids: Sequence[Sequence[int]], drop_first: int, first_index: int = 0) -> None:
    """Every prompt keeps a token after its first ``drop_first``; ``first_index`` numbers them in a longer set."""
    short = next((i for i, ids in enumerate(token_ids) if len(ids) <= drop_first), None)
    if short is not None:
        raise FunnelError(
            f"prompt {first_index + short} has {len(token_ids[short])} tokens, none left after dropping the "
            f"first {drop_first}: lower --drop-first or remove short prompts"
        )


def pad_token_id(tokenizer) -> int:
    """The id right-padding uses: the tokenizer's pad token, else its end-of-text, else 0 (masked out either way)."""
    return next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)


def tokenize(tokenizer, prompts: Sequence[str], n_ctx: int | None = None,
             model_name: str = "the model", max_tokens: int | None = None,
             truncation: dict | None = None, first_index: int = 0, d_vocab: int | None = None) -> list[list[int]]:
    """Token ids of each prompt, exactly as ``tokenizer(prompt)`` gives them.

    ``max_tokens``: keep only the first ``max_tokens`` tokens of each prompt, and fill
    ``truncation`` (a dict, if given) with what was cut (see ``truncation_record``). Without it a
    prompt longer than the context is an error, never cut silently. ``first_index``: the place of
    ``prompts[0]`` in the caller's whole prompt set (a chunk of a streamed corpus), for messages
    and the truncation record. ``d_vocab``: the model's vocabulary (embedding rows); an id at or
    past it would index past the embedding in the forward.

    Raises ``FunnelError`` for a prompt with no tokens, more tokens than the context, or a token
    the model has no embedding for.
    """
    if max_tokens is not None and max_tokens < 1:
        raise FunnelError(f"max_tokens_per_prompt must be at least 1, got {max_tokens}")
    token_ids, original_lengths = [], []
    # One call for all prompts (a fast tokenizer encodes the list at once, ~10× fewer Python calls):
    # without padding or truncation each row is exactly ``tokenizer(prompt)["input_ids"]``.
    encoded = tokenizer(list(prompts))["input_ids"] if len(prompts) else []
    for index, ids in enumerate(encoded):
        ids = list(ids)
        if not ids:
            raise FunnelError(f"prompt {first_index + index} is empty after tokenization: remove it")
        original_lengths.append(len(ids))
        if d_vocab is not None and d_vocab > 0 and max(ids) >= d_vocab:
            raise FunnelError(
                f"prompt {first_index + index} holds token id {max(ids)}, but {model_name} has a vocabulary of "
                f"{d_vocab} (ids 0-{d_vocab - 1}): its tokenizer does not match its embedding; check the "
                "checkpoint's tokenizer files and the vocab_size of its config.json")
        if max_tokens is not None:
            ids = ids[:max_tokens]
        elif n_ctx is not None and len(ids) > n_ctx:
            raise FunnelError(
                f"prompt {first_index + index} has {len(ids)} tokens but {model_name} has a context of {n_ctx}: "
                "shorten or split it, or pass --max-tokens-per-prompt context to truncate every prompt to it"
            )
        token_ids.append(ids)
    if max_tokens is not None and truncation is not None:
        truncation.update(truncation_record(original_lengths, max_tokens, first_index))
    return token_ids


def truncation_limit(max_tokens: int | str | None, n_ctx: int | None) -> int | None:
    """The tokens kept per prompt: ``max_tokens`` capped at the context, ``"context"`` for the context.

    >>> truncation_limit("context", 256), truncation_limit(100, 256), truncation_limit(1000, 256)
    (256, 100, 256)
    >>> truncation_limit(None, 256) is None
    True
    """
    if max_tokens is None:
        return None
    if max_tokens == "context":
        if n_ctx is None:
            raise FunnelError("the model states no context length: give --max-tokens-per-prompt a number")
        return int(n_ctx)
    try:
        limit = int(max_tokens)
    except (TypeError, ValueError):
        raise FunnelError(f"--max-tokens-per-prompt takes a number or 'context', got {max_tokens!r}") from None
    if limit < 1:
        raise FunnelError(f"--max-tokens-per-prompt must be at least 1, got {limit}")
    return min(limit, int(n_ctx)) if n_ctx is not None else limit


def truncation_record(original_lengths: Sequence[int], max_tokens: int, first_index: int = 0) -> dict:
    """What truncation did, for the provenance of results.json: nothing is cut silently.

    >>> truncation_record([3, 10, 7], 5)
    {'truncation': {'max_tokens_per_prompt': 5, 'n_truncated': 2, 'truncated_prompts': [1, 2], 'tokens_dropped': 7}}
    """
    cut = [i for i, n in enumerate(original_lengths) if n > max_tokens]
    return {"truncation": {
        "max_tokens_per_prompt": int(max_tokens), "n_truncated": len(cut),
        "truncated_prompts": [first_index + i for i in cut],
        "tokens_dropped": int(sum(original_lengths[i] - max_tokens for i in cut)),
    }}


@dataclass(frozen=True)
class Batch:
    """Right-padded token ids of some prompts, with their places in the original order."""

    indices: list[int]  # position of each row's prompt in the caller's prompt list
    tokens: torch.Tensor  # [batch, pos] int64
    attention_mask: torch.Tensor  # [batch, pos] 1 for real tokens, 0 for padding


def make_batches(token_ids: Sequence[Sequence[int]], batch_size: int,
                 pad_token_id: int = 0) -> Iterator[Batch]:
    """Yield batches of prompts of similar length (length bucketing), right-padded.

    Prompts are sorted by length so that little compute goes to padding; each batch carries the
    original indices, so results can be put back in the caller's order.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FunnelError(f"batch size must be an integer, at least 1, got {batch_size!r}")
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        width = max(len(token_ids[i]) for i in indices)
        # Padded in Python and converted once: one tensor per batch, not one per prompt.
        rows = [list(token_ids[i]) + [pad_token_id] * (width - len(token_ids[i])) for i in indices]
        masks = [[1] * len(token_ids[i]) + [0] * (width - len(token_ids[i])) for i in indices]
        yield Batch(indices=indices, tokens=torch.tensor(rows, dtype=torch.long),
                    attention_mask=torch.tensor(masks, dtype=torch.long))


def padding_fraction(batches: Iterable[Batch]) -> float:
    """Share of the positions in ``batches`` that are padding (0 means no wasted compute).

    >>> padding_fraction(make_batches([[1] * 5, [2] * 1, [3] * 9, [4] * 2], batch_size=2))
    0.2272727272727273
    """
    real = padded = 0
    for batch in batches:
        real += int(batch.attention_mask.sum())
        padded += batch.attention_mask.numel()
    return 1.0 - real / padded if padded else 0.0
