"""What a sweep measures: models and presets expanded, training checkpoints found, targets dealt over ranks."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from funnel_tl.errors import FunnelError
from funnel_tl.models.identity import local_checkpoints
from funnel_tl.models.loading import bundled_checkpoints, bundled_models, resolve_model_revision
from funnel_tl.results.folders import slug

# The eight Pythia sizes the seed's universality question is about (deduplicated weights; the
# "-deduped" twins are separate hub repositories and can be named explicitly).
PYTHIA_SUITE: tuple[str, ...] = tuple(
    f"EleutherAI/pythia-{size}" for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")
)
PRESETS: dict[str, tuple[str, ...]] = {"pythia-suite": PYTHIA_SUITE}

# Pythia's published training checkpoints (hub revisions step{N}): step 0, ten log-spaced steps
# 1 … 512, then every 1000 steps to 143000 — 154 in all (Biderman et al. 2023).
PYTHIA_STEPS: tuple[int, ...] = (0,) + tuple(2**k for k in range(10)) + tuple(range(1000, 143001, 1000))


# ---- what to measure ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """One model or training checkpoint to measure, and where its results go.

    ``label`` names it in tables, figures and ``results.json`` (``"EleutherAI/pythia-70m"``,
    ``"nano-4l@step1000"``); ``source`` and ``revision`` are what ``load_model`` receives;
    ``base`` is the model a checkpoint belongs to (the label itself for a plain model).
    """

    label: str
    source: str
    base: str
    revision: str | None = None
    step: int | None = None

    @property
    def slug(self) -> str:
        return slug(self.label)


# Pythia's sizes by their short names (``pythia-70m``, ``pythia-1.4b-deduped``): EleutherAI's hub repositories.
PYTHIA_NAME = re.compile(r"^pythia-\d+(?:\.\d+)?[mb](?:-deduped)?$")


def expand_models(models: str | Sequence[str]) -> list[str]:
    """Model names with presets expanded, in the order given.

    Each item may list several, comma-separated (``"pythia-70m,pythia-160m"``; a local folder
    whose own name holds a comma is taken whole). Pythia's sizes may be named short
    (``pythia-410m`` is ``EleutherAI/pythia-410m``) unless a bundled model or a local folder has
    that name.

    >>> expand_models(["pythia-suite"])[:2]
    ['EleutherAI/pythia-70m', 'EleutherAI/pythia-160m']
    >>> expand_models("pythia-70m,pythia-1.4b-deduped")
    ['EleutherAI/pythia-70m', 'EleutherAI/pythia-1.4b-deduped']
    """
    names = [models] if isinstance(models, (str, os.PathLike)) else list(models)
    expanded: list[str] = []
    for given in names:
        given = str(given)
        parts = [given] if "," not in given or Path(given).expanduser().exists() else given.split(",")
        for name in (part.strip() for part in parts):
            if not name:
                raise FunnelError(f"empty model name in --models {given!r}: separate names by one comma")
            if PYTHIA_NAME.match(name) and name not in bundled_models() and not Path(name).is_dir():
                name = f"EleutherAI/{name}"
            expanded.extend(PRESETS.get(name, (name,)))
    if not expanded:
        raise FunnelError("no models to compare: give at least one with --models")
    return expanded


def model_identity(name: str) -> str:
    """What a sweep calls a model, however it was typed: a local folder by its resolved path
    (``ckpts``, ``ckpts/``, ``./ckpts`` and ``/abs/ckpts`` are one model, one results folder), a
    hub name without a trailing slash, a bundled name as it is.

    >>> model_identity("EleutherAI/pythia-70m/")
    'EleutherAI/pythia-70m'
    """
    name = str(name)
    if name in bundled_models():
        return name
    folder = Path(name).expanduser()
    if folder.is_dir():
        return str(folder.resolve())
    return name.rstrip("/") or name


def parse_steps(checkpoints) -> str | list[int] | None:
    """``None``, ``"all"``, or the training steps asked for, sorted and deduplicated.

    Accepts ``"all"``, an int, ``"1000"``, ``"step1000"`` or a list of those.

    >>> parse_steps(["step1000", 0, "512"])
    [0, 512, 1000]
    >>> parse_steps("all")
    'all'
    """
    if checkpoints is None:
        return None
    items = [checkpoints] if isinstance(checkpoints, (str, int)) else list(checkpoints)
    if not items:
        return None
    if any(str(item) == "all" for item in items):
        if len(items) > 1:
            raise FunnelError("--checkpoints takes either 'all' or a list of steps, not both")
        return "all"
    steps = set()
    for item in items:
        match = re.fullmatch(r"(?:step)?(\d+)", str(item).strip())
        if not match:
            raise FunnelError(f"bad checkpoint {item!r}: give 'all' or steps such as 0 1000 step143000")
        steps.add(int(match.group(1)))
    return sorted(steps)


def _pick(available: Iterable[int], steps, name: str) -> list[int]:
    available = sorted(available)
    if steps == "all":
        return available
    missing = [step for step in steps if step not in available]
    if missing:
        shown = ", ".join(str(s) for s in available[:12]) + (" …" if len(available) > 12 else "")
        raise FunnelError(f"{name} has no checkpoint at step {missing[0]}: it has steps {shown or 'none'}")
    return list(steps)


def checkpoint_targets(model: str, steps) -> list[Target]:
    """The training checkpoints of one model, in step order.

    - a bundled name: its shipped checkpoints, loaded as ``load_model(name, revision="step<N>")``;
    - a local folder: its ``step<N>/`` or ``checkpoint-<N>/`` subfolders, loaded by path;
    - a hub name: the revisions ``step<N>``; ``"all"`` is known offline only for Pythia.
    """
    model = model_identity(model)
    if model in bundled_models():
        available = bundled_checkpoints(model)
        if not available:
            raise FunnelError(f"bundled model {model} ships no training checkpoints: leave out --checkpoints")
        return [
            Target(f"{model}@step{step}", model, model, f"step{step}", step) for step in _pick(available, steps, model)
        ]
    folder = Path(model).expanduser()
    if folder.is_dir():
        available = local_checkpoints(folder)
        if not available:
            raise FunnelError(
                f"{folder} holds no step<N>/ or checkpoint-<N>/ folders with a config.json: "
                "leave out --checkpoints to measure it as one model"
            )
        return [
            Target(f"{model}@step{step}", str(available[step].resolve()), model, None, step)
            for step in _pick(available, steps, model)
        ]
    if steps == "all":
        if not re.match(r"^EleutherAI/pythia-", model):
            raise FunnelError(
                f"cannot list the checkpoints of {model} offline: name the steps, e.g. --checkpoints 0 1000 143000"
            )
        steps = list(PYTHIA_STEPS)
    return [Target(f"{model}@step{step}", model, model, f"step{step}", step) for step in steps]


def plan_targets(models: str | Sequence[str], checkpoints=None) -> list[Target]:
    """Every target of a sweep: the models in the order given, each one's checkpoints by step.

    Targets are named by ``model_identity``: a local folder by its resolved path, so a rerun
    that types it otherwise finds the same results folders.

    >>> [t.label for t in plan_targets(["EleutherAI/pythia-70m"], checkpoints=["step1000", 0])]
    ['EleutherAI/pythia-70m@step0', 'EleutherAI/pythia-70m@step1000']
    """
    steps = parse_steps(checkpoints)
    targets: list[Target] = []
    for model in expand_models(models):
        if steps is not None:
            targets.extend(checkpoint_targets(model, steps))
            continue
        folder = Path(model).expanduser()
        if folder.is_dir() and not (folder / "config.json").is_file() and local_checkpoints(folder):
            raise FunnelError(
                f"{model} holds training checkpoints, not one model: add --checkpoints all (or a list of steps)"
            )
        model = model_identity(model)
        targets.append(Target(model, model, model))
    labels: dict[str, str] = {}
    slugs: dict[str, str] = {}
    for target in targets:
        if target.label in labels:
            raise FunnelError(f"{target.label} is named twice: give each model once")
        if target.slug in slugs:
            raise FunnelError(
                f"{target.label} and {slugs[target.slug]} would share the folder "
                f"{target.slug}: rename one or run them into different --out folders"
            )
        labels[target.label] = slugs[target.slug] = target.label
        # Cheap (no weights, no network): a mistyped name or a missing folder is refused before
        # any model of the sweep loads, not found after the others were measured.
        resolve_model_revision(target.source, target.revision)
    return targets


def assign_targets(pending: Sequence[int], n_ranks: int, rank: int) -> list[int]:
    """The pending targets (indices in sweep order) one rank measures: every ``n_ranks``-th from ``rank``.

    Only targets not yet finished (as rank 0 reads ``out``) are dealt, so a rerun with any number
    of ranks recomputes nothing finished; every rank computes the same deal from the same list.

    >>> assign_targets([0, 2, 3, 5, 6], 2, 1)
    [2, 5]
    """
    return list(pending[rank::n_ranks])
