"""Every command-line value checked as argparse reads it, before anything is imported or loaded.

Each option's check lives with its definition: its ``type=`` is one of the functions here, which
turn the text into the value or raise ``argparse.ArgumentTypeError`` with what to give; the CLI
then prints one line (``funnel-tl run: error: argument --bootstrap-seed: ...``) and exits 2.
``NEEDS`` holds the options that mean something only beside another, checked by
``check_needs`` right after parsing. Nothing here imports torch: an argument error answers at once.

>>> at_least(1, "--top")("5"), batch_size("auto"), max_tokens("context")
(5, 'auto', 'context')
>>> at_least(0, "--bootstrap-seed")("-1")
Traceback (most recent call last):
argparse.ArgumentTypeError: give a whole number, 0 or more, not '-1'
"""

from __future__ import annotations

import argparse
import re

from funnel_tl.errors import FunnelError
from funnel_tl.measure.interventions import parse_interventions
from funnel_tl.measure.options import check_batch_size, check_drop_first, check_max_tokens
from funnel_tl.results.folders import check_label

# The first positions `run --by-position` resolves one by one (positions.SINGLE_POSITIONS).
MAX_SINK_POSITIONS = 16
# accelerate's sizes (convert_file_size_to_int): a number and a unit, as --max-memory passes them on.
MEMORY_SIZE = re.compile(r"\d+(\.\d+)?\s*(GIB|MIB|KIB|GB|MB|KB)", re.IGNORECASE)

# Options that mean nothing alone: dest -> (the dest it needs, the option to add).
NEEDS = {
    "sink_positions": ("by_position", "--by-position"),
    "max_memory": ("device_map", "--device-map auto"),
    "split": ("dataset", "--dataset"),
    "text_field": ("dataset", "--dataset"),
}


def at_least(minimum: int, option: str, maximum: int | None = None):
    """``type=`` for a whole number from ``minimum`` (to ``maximum``)."""

    def parse(text: str) -> int:
        value = _integer(text)
        if value is None or value < minimum or (maximum is not None and value > maximum):
            bounds = f"{minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
            raise argparse.ArgumentTypeError(f"give a whole number, {bounds}, not {text!r}")
        return value

    parse.__name__ = option  # argparse names it in messages of its own
    return parse


def _integer(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


def whole_or(word: str, expected: str):
    """``type=`` for a whole number, 1 or more, or ``word``."""

    def parse(text: str) -> int | str:
        if text == word:
            return text
        value = _integer(text)
        if value is None or value < 1:
            raise argparse.ArgumentTypeError(f"give {expected}, not {text!r}")
        return value

    return parse


def checked(check, expected: str):
    """``type=`` for a measurement option: the text read as a number where it is one, then the
    value's rule is ``MeasureOptions``' own check (``funnel_tl.measure.options``), said in flag terms."""

    def parse(text: str):
        number = _integer(text)
        try:
            return check(number if number is not None else text.strip())
        except FunnelError:
            raise argparse.ArgumentTypeError(f"give {expected}, not {text!r}") from None

    return parse


# --batch-size, --max-tokens-per-prompt and --drop-first: the rules of MeasureOptions.
batch_size = checked(check_batch_size, "a whole number, 1 or more, or auto")
max_tokens = checked(check_max_tokens, "a number of tokens (1 or more) or 'context'")
drop_first = checked(check_drop_first, "a whole number, 0 or more")
# effects --stack.
stack = whole_or("auto", "a number of interventions per forward, 1 or more, or auto")


def interventions(text: str) -> tuple[str, ...]:
    """``effects --interventions``: one or several comma-separated specs (zero, mean, scale:S), as named."""
    try:
        return tuple(spec.name for spec in parse_interventions(text))
    except FunnelError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def bootstrap(text: str) -> int:
    """``--bootstrap``: 0 (no intervals) or a number of resamples up to ``stats.MAX_RESAMPLES``."""
    # Imported on use: keeps einops and numpy out of `funnel-tl --help`.
    from funnel_tl.analysis.stats import check_bootstrap

    value = _integer(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"give 0 (no intervals) or a number of resamples, not {text!r}")
    try:
        check_bootstrap(value)
    except FunnelError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return value


def layers(text: str) -> list[int] | None:
    """``--layers``: ``layers.parse_layers``'s numbers and ranges (``0-3,-1``)."""
    # Imported on use: keeps numpy out of `funnel-tl --help`.
    from funnel_tl.measure.layers import parse_layers

    try:
        return parse_layers(text)
    except FunnelError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def checkpoint(text: str) -> str:
    """One item of ``--checkpoints``: ``all``, a step (``1000``) or ``step1000``."""
    if text != "all" and not re.fullmatch(r"(?:step)?\d+", text.strip()):
        raise argparse.ArgumentTypeError(f"bad checkpoint {text!r}: give 'all' or steps such as 0 1000 step143000")
    return text


def max_memory(value: str) -> dict:
    """``--max-memory``: ``0=20GiB,1=20GiB,cpu=64GiB`` → {0: '20GiB', 1: '20GiB', 'cpu': '64GiB'}."""
    budget = {}
    for item in value.split(","):
        device, _, amount = item.partition("=")
        device, amount = device.strip(), amount.strip()
        if not device or not amount:
            raise argparse.ArgumentTypeError(
                f"give DEVICE=AMOUNT pairs such as 0=20GiB,1=20GiB,cpu=64GiB, not {value!r}"
            )
        if not (amount.isdigit() or MEMORY_SIZE.fullmatch(amount)):
            raise argparse.ArgumentTypeError(
                f"{amount!r} is not an amount of memory: give bytes or a number with "
                "GiB, MiB, KiB, GB, MB or KB, such as 20GiB"
            )
        budget[int(device) if device.isdigit() else device] = int(amount) if amount.isdigit() else amount
    return budget


def label(value: str) -> str | None:
    """``type=`` of --label: one line of text (``outputs.check_label``, as ``label=`` is checked)."""
    try:
        return check_label(value)
    except FunnelError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def text(option: str):
    """``type=`` for a name or path that must hold more than whitespace."""

    def parse(value: str) -> str:
        if not value.strip():
            raise argparse.ArgumentTypeError(f"give a value, not {value!r}")
        return value

    parse.__name__ = option
    return parse


def check_needs(args: argparse.Namespace, command: argparse.ArgumentParser) -> None:
    """The options of ``NEEDS`` given (not at ``command``'s default) without the one they need."""
    for dest, (needed, add) in NEEDS.items():
        if not hasattr(args, dest) or getattr(args, dest) == command.get_default(dest):
            continue
        if not getattr(args, needed, None):
            option = "--" + dest.replace("_", "-")
            raise FunnelError(f"{option} needs {add.split()[0]}: add {add}, or leave {option} out")
