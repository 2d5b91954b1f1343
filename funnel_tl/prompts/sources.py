"""Where prompts come from at scale: corpus files read lazily, HF ``datasets``, ``--max-prompts``.

``prompts.load_prompts`` reads a whole prompt file; a corpus of thousands of documents needs only
its first N read (``max_prompts``), and may live in a HuggingFace dataset. ``read_prompts``
returns the prompts and a record of where they came from (``source``, ``max_prompts``, and
whether the source held more: ``more_available``), which the CLI writes into the provenance of
results.json, so a capped corpus is never mistaken for the whole.

Files are iterated line by line and reading stops at ``max_prompts``; a dataset is opened with
``streaming=True`` (local files and hub datasets alike), so nothing past the cap is read.
``stream_prompts`` hands the prompts on as an iterator, read as the measurement consumes them
(``funnel_tl.measure.streaming``): ``funnel-tl run`` and ``heads`` measure a corpus of any size that way.

>>> prompts, record = read_prompts("seed", max_prompts=2)
>>> len(prompts), record["more_available"]
(2, True)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

from funnel_tl.errors import FunnelError, one_line
from funnel_tl.prompts.sets import check_unicode, iter_prompts

# datasets' packaged builders, by file suffix, for a local data file given as --dataset.
DATASET_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".txt": "text",
    ".arrow": "arrow",
}


def read_prompts(
    prompts: str = "seed",
    *,
    max_prompts: int | None = None,
    dataset: str | None = None,
    split: str = "train",
    text_field: str = "text",
) -> tuple[list[str], dict]:
    """``(prompts, record)``: from ``prompts`` (as ``load_prompts``) or a HF ``dataset``, at most ``max_prompts``.

    ``dataset``: a local data file (``.jsonl``/``.json``/``.csv``/``.parquet``/``.txt``), a folder
    written by ``Dataset.save_to_disk``, or a hub dataset name; ``split`` and ``text_field`` pick
    the split and the column holding the text. Empty texts are skipped, as blank lines are.
    """
    # No read-ahead: list() reads the file once, checking each record within the cap as it goes.
    stream, record = _open(prompts, max_prompts, dataset, split, text_field, read_ahead=False)
    return list(stream), record


def stream_prompts(
    prompts: str = "seed",
    *,
    max_prompts: int | None = None,
    dataset: str | None = None,
    split: str = "train",
    text_field: str = "text",
) -> tuple[Iterator[str], dict]:
    """``(prompts, record)`` as ``read_prompts``, the prompts an iterator read only as it is consumed.

    A prompt file is read through once here, keeping nothing but a count, so a bad line (within
    the cap) fails before a model loads, as with ``read_prompts``; the prompts are then read again
    as they are measured. A dataset is not read twice (a hub dataset would download twice): its
    first text is read here, so a missing dataset, split or field fails early.
    ``record["n_prompts"]`` and ``["more_available"]`` are filled in when the iterator is
    exhausted (``measure_gains`` consumes it chunk by chunk: ``funnel_tl.measure.streaming``).
    """
    return _open(prompts, max_prompts, dataset, split, text_field, read_ahead=True)


def _open(
    prompts: str, max_prompts: int | None, dataset: str | None, split: str, text_field: str, read_ahead: bool
) -> tuple[Iterator[str], dict]:
    """The prompts as an iterator and their record; ``read_ahead``: check a prompt file's records
    within the cap now, before the iterator reads them again (a stream fails before a model loads)."""
    if max_prompts is not None and max_prompts < 1:
        raise FunnelError(f"--max-prompts must be at least 1, got {max_prompts}")
    if dataset is not None:
        if prompts != "seed":
            raise FunnelError("give either --prompts or --dataset, not both")
        source = f"dataset {dataset} (split {split}, field {text_field})"
        texts = _dataset_texts(dataset, split, text_field)
    else:
        source = str(prompts)
        if read_ahead:
            for _ in itertools.islice(iter_prompts(prompts), max_prompts):  # every record checked, none kept
                pass
        texts = iter_prompts(prompts)  # the strict reading of load_prompts, lazily
    first = next(texts, None)
    if first is None:
        raise FunnelError(f"no prompts in {source}: give at least one non-blank prompt")
    record = {"source": source, "max_prompts": max_prompts, "n_prompts": None, "more_available": False}
    return _capped(itertools.chain([first], texts), max_prompts, record), record


def _capped(texts: Iterator[str], max_prompts: int | None, record: dict) -> Iterator[str]:
    """At most ``max_prompts`` of ``texts``; the count and whether more were there go into ``record``."""
    count = 0
    for text in itertools.islice(texts, max_prompts):
        count += 1
        record["n_prompts"] = count
        yield text
    if max_prompts is not None and count == max_prompts:
        try:  # one look past the cap: is the corpus larger than what was measured?
            record["more_available"] = next(texts, None) is not None
        except FunnelError:  # a bad line beyond the cap is more text, not an error of this run
            record["more_available"] = True


def _check_hub(name: str) -> None:
    """Before streaming a hub dataset: one short connect to the hub (``models``' probe), so that without
    a network the answer is one line at once, not HuggingFace's retries for half a minute.

    Offline by ``datasets``' own settings (``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE``): no probe,
    ``datasets`` reads its cache as it would."""
    import datasets.config

    # Imported on use: looked up in its own module on each call (where tests replace it).
    from funnel_tl.models.hub import unreachable_hub

    host = None if datasets.config.HF_HUB_OFFLINE else unreachable_hub()
    if host is not None:
        raise FunnelError(
            f"cannot reach the dataset hub ({host}) to stream {name!r}, and no local file or folder "
            f"has that name: check the network, or give a local data file "
            f"({', '.join(DATASET_BUILDERS)}) or a folder written by Dataset.save_to_disk"
        )


def _dataset_texts(name: str, split: str, text_field: str) -> Iterator[str]:
    """The non-empty texts of one split of a HF dataset, streamed (nothing past what is taken is read)."""
    try:
        # Imported on use: datasets is optional (the [datasets] extra), needed by --dataset only.
        import datasets
    except ImportError:
        raise FunnelError("--dataset needs the datasets package: pip install 'funnel_tl[datasets]'") from None
    path = Path(name).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise FunnelError(f"{name} has no split {split!r}: choose one of {', '.join(loaded)}")
                loaded = loaded[split]
            rows = loaded.to_iterable_dataset()
        elif path.is_file():
            builder = DATASET_BUILDERS.get(path.suffix)
            if builder is None:
                raise FunnelError(f"cannot read {path} as a dataset: give a {', '.join(DATASET_BUILDERS)} file")
            with _builders_quiet():
                rows = datasets.load_dataset(builder, data_files={split: str(path)}, split=split, streaming=True)
        else:
            if not path.exists() and (path.suffix in DATASET_BUILDERS or name.startswith((".", "/", "~"))):
                raise FunnelError(
                    f"dataset file not found: {name} (give a {', '.join(DATASET_BUILDERS)} file, "
                    "a folder written by Dataset.save_to_disk, or a hub name)"
                )
            if not path.exists():  # a local folder of data files loads without the hub
                _check_hub(name)
            rows = datasets.load_dataset(name, split=split, streaming=True)
    except FunnelError:
        raise
    except (OSError, ValueError, KeyError, FileNotFoundError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FunnelError(f"cannot open dataset {name!r} (split {split!r}): {first_line}") from None
    what = f"dataset file {path}" if path.is_file() else f"dataset {name!r} (split {split!r})"
    for number, row in enumerate(_read_rows(rows, what)):
        if text_field not in row:
            raise FunnelError(
                f"dataset {name} has no field {text_field!r} (fields: {', '.join(row)}): choose one with --text-field"
            )
        text = row[text_field]
        if text is None or not str(text).strip():
            continue
        yield check_unicode(str(text), f"{what}, row {number}")


@contextlib.contextmanager
def _builders_quiet():
    """datasets' file builders log a parse error before raising it: the raised one is reported, in one line."""
    logger = logging.getLogger("datasets.packaged_modules")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_rows(rows: Iterable[dict], what: str) -> Iterator[dict]:
    """The rows of a streamed dataset; whatever its reader raises (pyarrow's ArrowInvalid on a bad
    JSON line, pandas' ParserError on a bad CSV) is one line naming ``what`` and the parse error."""
    iterator = iter(rows)
    while True:
        try:
            with _builders_quiet():
                row = next(iterator)
        except StopIteration:
            return
        except FunnelError:
            raise
        except Exception as error:  # the data file's reader: any failure is the file's
            raise FunnelError(f"cannot read {what}: {one_line(error)}: fix the file or give another") from None
        yield row
