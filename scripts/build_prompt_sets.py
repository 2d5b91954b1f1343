"""Build funnel_tl's built-in ``varied`` prompt set: passages of three kinds of English, frozen in a file.

The seed's eight prompts (~110 tokens) are too few for firm intervals; a real model should also
read more than one kind of text. ``funnel_tl/prompts/prompt_sets/varied.jsonl`` holds, one JSON object a
line (``{"text": ..., "source": ...}``), ``PER_SOURCE`` passages (120, 120 and 60) from:

- ``devil``: Ambrose Bierce, *The Devil's Dictionary* (1881-1906; public domain, copyright
  expired): satirical definitions, anecdotes and comic verse in literary English;
- ``jargon``: *The Jargon File* 4.4.7 (29 Dec 2003; public domain by its authors' dedication):
  informal modern English about computing culture, with its history and anecdotes;
- ``pydoc``: the Python documentation topics and standard-library docstrings
  (``funnel_tl.prompts.corpus``, PSF License), prose paragraphs of its *held-out* split only, so the
  bundled nano models, trained on the rest, never saw them.

The first two are read from Debian's dictd packages (``apt-get install dict-devil dict-jargon``:
``/usr/share/dictd/{devil,jargon}.{index,dict.dz}``); the third from the running Python. The
file is frozen in the package, so every installation measures the same passages, whatever its
Python version or packages; rerun this script only to change the set on purpose.

A passage is an entry (a paragraph for pydoc) cleaned to plain text: markup and pronunciations
dropped, prose lines joined, verse kept line by line, cut at a paragraph or sentence boundary to
at most ``MAX_WORDS`` words; entries under ``MIN_WORDS`` words are skipped. Which entries are
taken is fixed by the sha256 of their names, not by their order, so the set samples each source
evenly from A to Z.

    python scripts/build_prompt_sets.py            # writes funnel_tl/prompts/prompt_sets/varied.jsonl
"""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from funnel_tl.prompts import corpus  # noqa: E402

DICTD = Path("/usr/share/dictd")
OUT = REPO / "funnel_tl" / "prompts" / "prompt_sets" / "varied.jsonl"
# Passages taken from each source: 300 in all. The held-out pydoc split is small (52 documents, 78
# prose paragraphs within the per-document cap), so it gives 60 and the two dictionaries 120 each.
PER_SOURCE = {"devil": 120, "jargon": 120, "pydoc": 60}
# 25 to 120 words: ~35 to ~170 tokens, long enough that position 0 is one token among dozens, short
# enough for the bundled models' 256-token context and for a CPU run of the whole set in minutes.
MIN_WORDS, MAX_WORDS = 25, 120
# The bundled models' context is 256 tokens, and their 2,048-token vocabulary splits the Jargon
# File's punctuation finely: a passage over this many of their tokens is skipped.
MAX_TOKENS = 240
# At most this many paragraphs of one pydoc document: one topic ("types") alone holds 60.
PER_DOCUMENT = 8
BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _number(text: str) -> int:
    """A dictd index offset or length (base64 digits, most significant first)."""
    value = 0
    for character in text:
        value = value * 64 + BASE64.index(character)
    return value


def dictd_entries(name: str) -> list[tuple[str, str]]:
    """(headword, raw entry) of every entry of a dictd database, its own header entries left out."""
    data = gzip.open(DICTD / f"{name}.dict.dz").read()
    entries = []
    for line in (DICTD / f"{name}.index").read_text(encoding="utf-8").splitlines():
        word, offset, length = line.split("\t")[:3]
        if word.startswith("00-database") or word.startswith("00database"):
            continue
        start = _number(offset)
        entries.append((word, data[start : start + _number(length)].decode("utf-8")))
    return entries


def paragraphs(text: str) -> list[str]:
    """Paragraphs as plain text: prose lines joined by spaces, verse (indented lines) kept one a line."""
    blocks = [block for block in re.split(r"\n\s*\n", text) if block.strip()]
    cleaned = []
    for block in blocks:
        lines = [line for line in block.split("\n") if line.strip()]
        indented = sum(len(line) - len(line.lstrip()) >= 4 for line in lines)
        verse = len(lines) > 1 and indented == len(lines) and max(len(line.strip()) for line in lines) < 60
        joined = ("\n" if verse else " ").join(re.sub(r"\s+", " ", line.strip()) for line in lines)
        cleaned.append(joined)
    return cleaned


def words(text: str) -> int:
    return len(text.split())


def cut(parts: list[str]) -> str | None:
    """Leading paragraphs up to MAX_WORDS words (the first cut at a sentence end if alone too long)."""
    kept, total = [], 0
    for part in parts:
        if total + words(part) <= MAX_WORDS:
            kept.append(part)
            total += words(part)
            continue
        if not kept:  # one long paragraph: its leading sentences
            sentences, count = [], 0
            for sentence in re.split(r"(?<=[.!?])\s+", part):
                if count + words(sentence) > MAX_WORDS:
                    break
                sentences.append(sentence)
                count += words(sentence)
            kept = [" ".join(sentences)] if sentences else []
        break
    text = "\n".join(kept).strip()
    return text if text and words(text) >= MIN_WORDS else None


def devil_passages() -> list[tuple[str, str]]:
    found = []
    for word, raw in dictd_entries("devil"):
        text = raw.replace("_", "")  # _italics_
        found.append((f"devil/{word}", cut(paragraphs(text))))
    return [(name, text) for name, text in found if text]


def jargon_passages() -> list[tuple[str, str]]:
    found = []
    for word, raw in dictd_entries("jargon"):
        head, _, body = raw.partition("\n")
        grammar, _, body = body.partition("\n")  # " n." or " /pronunciation/, n."
        part_of_speech = grammar.strip().split(",")[-1].strip()
        text = re.sub(r"[{}]", "", body)  # {cross references}
        parts = paragraphs(text)
        if not parts or re.search(r"https?://|@\w", text):
            continue  # addresses and mail handles read as no English at all
        lead = f"{head.strip()}" + (f", {part_of_speech}" if part_of_speech else "")
        found.append((f"jargon/{word}", cut([f"{lead} {parts[0]}", *parts[1:]])))
    return [(name, text) for name, text in found if text]


def pydoc_passages() -> list[tuple[str, str]]:
    found = []
    for name, text in corpus.documents("heldout"):
        kept = 0
        for index, block in enumerate(re.split(r"\n\s*\n", text)):
            lines = [line for line in block.split("\n") if line.strip()]
            if lines and re.fullmatch(r"[\w.]+", lines[0]) and len(lines) > 1:
                lines = lines[1:]  # the dotted name corpus.py puts above each docstring
            if not lines or kept >= PER_DOCUMENT:
                continue
            if any(line.startswith((" ", "\t", ">>>", "...")) for line in lines) or re.search(
                r"[|=*~^-]{3}|::$", block
            ):
                continue  # code, tables, headings and the lines before a code block
            prose = re.sub(r"\s+", " ", " ".join(lines)).strip()
            if not re.search(r"[.!?]$", prose) or prose.count("(") > 6:
                continue
            passage = cut([prose])
            if passage:
                found.append((f"pydoc/{name}#{index}", passage))
                kept += 1
    return found


def fits(passages: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The passages within ``MAX_TOKENS`` of the bundled models' tokenizer (the one that splits finest)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO / "funnel_tl" / "models" / "bundled" / "nano-8l")
    lengths = [len(ids) for ids in tokenizer([text for _, text in passages])["input_ids"]]
    return [passage for passage, length in zip(passages, lengths, strict=True) if length <= MAX_TOKENS]


def sample(passages: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    """``k`` passages chosen by the sha256 of their names (stable when a source gains or loses entries)."""
    passages = fits(passages)
    if len(passages) < k:
        raise SystemExit(f"only {len(passages)} passages of {passages[0][0].split('/')[0]}, {k} wanted")
    ranked = sorted(passages, key=lambda item: hashlib.sha256(item[0].encode("utf-8")).hexdigest())
    return sorted(ranked[:k])


def main() -> None:
    chosen = []
    for source in (devil_passages, jargon_passages, pydoc_passages):
        found = source()
        chosen += sample(found, PER_SOURCE[found[0][0].split("/")[0]])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as handle:
        for name, text in chosen:
            handle.write(json.dumps({"text": text, "source": name}, ensure_ascii=False) + "\n")
    print(
        f"wrote {len(chosen)} passages ({sum(words(t) for _, t in chosen)} words) to {OUT} "
        f"with Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
