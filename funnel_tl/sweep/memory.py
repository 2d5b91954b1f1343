"""Memory accounting per target: parameters counted, peak memory read, memory released between models."""

from __future__ import annotations

import contextlib
import gc
import re
import sys
from pathlib import Path

import torch


def count_parameters(model) -> int:
    """The checkpoint's own parameter count, each tensor once (tied embeddings count once).

    Not ``model.parameters()``: a bridge holds both the HF model's fused QKV weights and the split
    copies TransformerLens makes of them, inside the HF modules it wraps (nano-2l: 387,200
    instead of the checkpoint's 362,240). The HF architecture is instead rebuilt from the model's
    own config on the meta device (no memory, no weights read) and its parameters counted; a
    model without an HF config (a ``HookedTransformer``) counts its own parameters by storage.
    """
    config = getattr(getattr(model, "original_model", None), "config", None)
    if config is not None:
        # Imported on use: transformers takes seconds to import (not needed by `--help`).
        from transformers import AutoModelForCausalLM

        try:
            with torch.device("meta"):
                skeleton = AutoModelForCausalLM.from_config(config)
            return sum(p.numel() for p in skeleton.parameters())  # parameters() yields a tied tensor once
        except (ValueError, KeyError, TypeError, RuntimeError):
            pass  # an architecture transformers cannot rebuild from its config: count by storage below
    seen, total = set(), 0
    for parameter in model.parameters():
        key = (parameter.data_ptr(), parameter.numel())
        if key not in seen:
            seen.add(key)
            total += parameter.numel()
    return total


def release_memory() -> None:
    """Free what the last model left, reference cycles included, before the next loads.

    Inside ``collecting_per_target`` this costs what the last model allocated, not what the
    process holds: every object alive after a collection is frozen (``gc.freeze``), so the next
    full collection only visits what came after. A full collection of a process holding torch,
    transformers and TransformerLens took 0.2 s every time, longer than loading and measuring a
    small checkpoint.
    """
    gc.collect()
    gc.freeze()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def collecting_per_target():
    """For a sweep's loop over targets: ``release_memory`` collects only each target's objects;
    on the way out every object frozen meanwhile is handed back to the collector (unless the
    caller had frozen objects of its own: then they all stay so, as it chose)."""
    had_frozen = gc.get_freeze_count() > 0
    try:
        yield
    finally:
        if not had_frozen:
            gc.unfreeze()


# Linux can reset a process's peak resident set size (VmHWM) by writing 5 to clear_refs, which
# makes the CPU peak per model; elsewhere the process-wide peak is what there is.
def reset_peak_memory(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory(device: str) -> tuple[int, str]:
    if str(device).startswith("cuda"):
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    try:
        status = Path("/proc/self/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
        if match:
            return int(match.group(1)) * 1024, "rss_peak"
    except OSError:
        pass
    try:
        import resource  # Unix only; reached only where /proc is missing (macOS)
    except ImportError:
        return 0, "unknown"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return int(peak if sys.platform == "darwin" else peak * 1024), "process_rss_peak"
