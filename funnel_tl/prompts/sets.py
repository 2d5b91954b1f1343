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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from funnel_tl.errors import FunnelError
from funnel_tl.results.schema import kind

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
# shipped in funnel_tl/prompts/prompt_sets (how each was built and its licence: prompt_sets/README.md).
PROMPT_SETS: dict[str, str] = {
    "seed": "the seed notebook's 8 one-sentence prompts (~110 tokens); the default, for parity with the notebook "
    "and its Pythia-1.4B reference, measured on them",
    "varied": "300 passages of varied English (~24,000 tokens), read offline: The Devil's Dictionary (120, "
    "public domain), the Jargon File (120, public domain), Python documentation held out from the "
    "bundled models' training (60, PSF License)",
}
PROMPT_SET_DIR = Path(__file__).parent / "prompt_sets"

# How each prompt-file extension is read; anything else is refused rather than guessed at.
FILE_FORMATS = (
    '.txt (one prompt per line), .jsonl (one {"text": "..."} object per line) or '
    '.json (a list of strings, or of {"text": "..."} objects)'
)
WHAT_TO_PASS = "a built-in set ('seed', 'varied'), a .txt, .jsonl or .json prompt file, or a list of prompt strings"


def load_prompts(spec: str | os.PathLike | Sequence[str] = "seed") -> list[str]:
    """Return a list of prompts from a built-in set, a prompt file, or a sequence of strings.

    Prompts are texts, not tokens: every measurement tokenizes them with the model's own
    tokenizer. Every prompt must hold more than whitespace and be valid Unicode; anything else
    is a ``FunnelError`` naming the file and line (or the prompt's index).

    Args:
        spec: A built-in set (``PROMPT_SETS``): ``"seed"``, the seed notebook's eight prompts
            (the default), or ``"varied"``, 300 passages of varied English shipped with the
            package (read offline). Or a prompt file, read as strict UTF-8 (a leading
            byte-order mark is dropped) and by extension: ``.txt`` one prompt per non-blank line
            (stripped); ``.jsonl`` one object per non-blank line with a ``"text"`` string;
            ``.json`` a list of strings or of such objects. Or a sequence of prompt strings,
            taken as they are (not stripped).

    Returns:
        The prompts in their order, at least one.

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
            raise FunnelError(
                f"prompt file not found: {shown!r}; prompts are {WHAT_TO_PASS}: to measure "
                f"one prompt, pass it in a list, [{shown!r}], or on the command line write it to a .txt file"
            )
        raise FunnelError(f"prompt file not found: {path} (give {WHAT_TO_PASS})")
    readers = {".txt": _txt_records, ".jsonl": _jsonl_records, ".json": _json_records}
    if suffix not in readers:
        raise FunnelError(
            f"{path}: cannot tell how to read a {suffix or 'extensionless'} file: save it as {FILE_FORMATS}"
        )
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
                    raise FunnelError(
                        f"{path}:{number} is not valid UTF-8 (byte {error.start + 1} of the line): "
                        "save the file as UTF-8 text"
                    ) from None
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
            raise FunnelError(
                f'{path}:{number}: not JSON ({error.msg}): expected an object with a "text" field on each line'
            ) from None
        yield f"{path}:{number}", _text_field(record, f"{path}:{number}")


def _json_records(path: Path) -> Iterator[tuple[str, object]]:
    text = "\n".join(line for _, line in _lines(path))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise FunnelError(
            f"{path} is not valid JSON ({error.msg} at line {error.lineno}): expected a list of prompt strings"
        ) from None
    if not isinstance(data, list):
        raise FunnelError(
            f'{path} holds a JSON {type(data).__name__}: expected a list of strings or of {{"text": "..."}} objects'
        )
    for index, record in enumerate(data):
        where = f"{path}[{index}]"
        yield where, _text_field(record, where) if isinstance(record, dict) else record


def _text_field(record: object, where: str) -> object:
    if not isinstance(record, dict) or "text" not in record:
        # An object's own keys say what it holds instead ("txt", "content"): rename one to "text".
        keys = ", ".join(f'"{key}"' for key in list(record)[:6]) if isinstance(record, dict) else ""
        got = f"an object with {keys or 'no keys'}" if isinstance(record, dict) else kind(record)
        raise FunnelError(f'{where}: expected a JSON object with a "text" field, got {got}')
    return record["text"]


def _iter_sequence(spec) -> Iterator[tuple[str, object]]:
    if (
        isinstance(spec, (bytes, bytearray))
        or hasattr(spec, "shape")
        or isinstance(spec, (dict, set, frozenset))
        or not isinstance(spec, Iterable)
    ):
        what = "a token tensor" if hasattr(spec, "shape") else f"a {type(spec).__name__}"
        raise FunnelError(
            f"prompts must be {WHAT_TO_PASS}, got {what}: pass the prompt texts; they are "
            "tokenized with the model's own tokenizer"
        )
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
    """  # noqa: E501 -- a doctest expects the whole exception message on one line
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise FunnelError(
            f"{where}: the prompt holds invalid Unicode (a lone surrogate "
            f"\\u{ord(text[error.start]):04x} at character {error.start}): fix the text or remove "
            "the prompt"
        ) from None
    return text


def prompts_sha256(prompts: Sequence[str]) -> str:
    """A stable fingerprint of a prompt set (order matters), recorded in every results file."""
    return hashlib.sha256(json.dumps(list(prompts), ensure_ascii=False).encode("utf-8")).hexdigest()
