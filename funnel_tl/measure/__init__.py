"""Measurement: forwards through the TransformerLens hooks (or the verified HF modules) reduced to
per-prompt norm sums, per layer, head and position; interventions and their effects; torchrun.

Every name below is imported from its module on first use (PEP 562), so importing the
subpackage imports no torch.
"""

import importlib
from typing import TYPE_CHECKING

# Each public name and the module it lives in.
_EXPORTS = {
    "IDENTITY_TOLERANCE": "gains",
    "activation_norms": "gains",
    "token_norms": "gains",
    "check_residual_identities": "gains",
    "FORWARD_ORDER": "gains",
    "FROM_1": "gains",
    "check_finite": "gains",
    "prepare_tokens": "gains",
    "measure_gains": "gains",
    "IDENTITY_SUFFIXES": "gains",
    "GainSums": "gains",
    "run_provenance": "gains",
    "STOP_EARLY": "engine",
    "AGREEMENT_TOLERANCE": "engine",
    "FAST_ATTENTION": "engine",
    "VERIFY_ROWS": "engine",
    "Reduction": "engine",
    "prompt_sums": "engine",
    "counted_tokens": "engine",
    "forward_kwargs": "engine",
    "TLExecutor": "engine",
    "HFExecutor": "engine",
    "Engine": "engine",
    "CPU_BATCH_SIZE": "engine",
    "AUTO_MEMORY_FRACTION": "engine",
    "MAX_AUTO_BATCH_SIZE": "engine",
    "activation_bytes_per_token": "engine",
    "auto_batch_size": "engine",
    "resolve_batch_size": "engine",
    "CHUNK_PROMPTS": "streaming",
    "PromptDigest": "streaming",
    "chunked": "streaming",
    "TokenStream": "streaming",
    "PerPrompt": "streaming",
    "ROLES": "reads",
    "definition_roles": "reads",
    "ReadSums": "reads",
    "LOW": "medians",
    "HIGH": "medians",
    "BIN_WIDTH": "medians",
    "N_BINS": "medians",
    "MAX_ERROR": "medians",
    "METHOD": "medians",
    "bin_index": "medians",
    "bin_centres": "medians",
    "HistogramAccumulator": "medians",
    "TokenHistograms": "medians",
    "gains_from_cache": "cache",
    "head_gains": "heads",
    "HeadSums": "heads",
    "check_head_identity": "heads",
    "bucket_one_hot": "positions",
    "position_sums": "positions",
    "grown": "positions",
    "PositionAccumulator": "positions",
    "HeadPositionAccumulator": "positions",
    "AGREEMENT": "effects",
    "STACK_CHOICES": "effect_sizes",
    "AUTO_STACK": "effect_sizes",
    "LOSS_CHUNK_FLOATS": "effects",
    "ComponentMeans": "means",
    "ContributionSums": "means",
    "component_means": "means",
    "Job": "effects",
    "batch_effects": "effects",
    "choose_runner": "effects",
    "check_stack": "effect_sizes",
    "effects_batch_size": "effect_sizes",
    "effects_bytes_per_token": "effect_sizes",
    "resolve_sizes": "effect_sizes",
    "measure_effects": "effects",
    "measure_effects_on_ranks": "effects",
    "CHECKPOINT_SECONDS": "effect_checkpoints",
    "CheckpointStore": "effect_checkpoints",
    "checkpoint_settings": "effect_checkpoints",
    "read_checkpoint": "effect_checkpoints",
    "write_partial": "effect_checkpoints",
    "REPLAY_BYTES": "intervene",
    "Edit": "intervene",
    "TLRunner": "intervene",
    "HFRunner": "intervene",
    "contribution_hooks": "intervene",
    "DEFAULT_INTERVENTIONS": "interventions",
    "COMPONENT_HOOKS": "interventions",
    "Intervention": "interventions",
    "parse_intervention": "interventions",
    "parse_interventions": "interventions",
    "World": "distributed",
    "world": "distributed",
    "launched_by_torchrun": "distributed",
    "session": "distributed",
    "check_all": "distributed",
    "together": "distributed",
    "shard_by_tokens": "distributed",
    "gather_to_main": "distributed",
    "broadcast_from_main": "distributed",
    "measure": "distributed",
    "in_callers_terms": "distributed",
    "assemble": "distributed",
    "EXECUTORS": "options",
    "MeasureOptions": "options",
    "parse_layers": "layers",
    "resolve_layers": "layers",
    "layers_in_model": "layers",
    "check_layer_selection": "layers",
    "check_measured": "layers",
    "format_layers": "layers",
    "format_layer_spans": "layers",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from funnel_tl.measure.cache import gains_from_cache
    from funnel_tl.measure.distributed import (
        World,
        assemble,
        broadcast_from_main,
        check_all,
        gather_to_main,
        in_callers_terms,
        launched_by_torchrun,
        measure,
        session,
        shard_by_tokens,
        together,
        world,
    )
    from funnel_tl.measure.effect_checkpoints import (
        CHECKPOINT_SECONDS,
        CheckpointStore,
        checkpoint_settings,
        read_checkpoint,
        write_partial,
    )
    from funnel_tl.measure.effect_sizes import (
        AUTO_STACK,
        STACK_CHOICES,
        check_stack,
        effects_batch_size,
        effects_bytes_per_token,
        resolve_sizes,
    )
    from funnel_tl.measure.effects import (
        AGREEMENT,
        LOSS_CHUNK_FLOATS,
        Job,
        batch_effects,
        choose_runner,
        measure_effects,
        measure_effects_on_ranks,
    )
    from funnel_tl.measure.engine import (
        AGREEMENT_TOLERANCE,
        AUTO_MEMORY_FRACTION,
        CPU_BATCH_SIZE,
        FAST_ATTENTION,
        MAX_AUTO_BATCH_SIZE,
        STOP_EARLY,
        VERIFY_ROWS,
        Engine,
        HFExecutor,
        Reduction,
        TLExecutor,
        activation_bytes_per_token,
        auto_batch_size,
        counted_tokens,
        forward_kwargs,
        prompt_sums,
        resolve_batch_size,
    )
    from funnel_tl.measure.gains import (
        FORWARD_ORDER,
        FROM_1,
        IDENTITY_SUFFIXES,
        IDENTITY_TOLERANCE,
        GainSums,
        activation_norms,
        check_finite,
        check_residual_identities,
        measure_gains,
        prepare_tokens,
        run_provenance,
        token_norms,
    )
    from funnel_tl.measure.heads import HeadSums, check_head_identity, head_gains
    from funnel_tl.measure.intervene import REPLAY_BYTES, Edit, HFRunner, TLRunner, contribution_hooks
    from funnel_tl.measure.interventions import (
        COMPONENT_HOOKS,
        DEFAULT_INTERVENTIONS,
        Intervention,
        parse_intervention,
        parse_interventions,
    )
    from funnel_tl.measure.layers import (
        check_layer_selection,
        check_measured,
        format_layer_spans,
        format_layers,
        layers_in_model,
        parse_layers,
        resolve_layers,
    )
    from funnel_tl.measure.means import ComponentMeans, ContributionSums, component_means
    from funnel_tl.measure.medians import (
        BIN_WIDTH,
        HIGH,
        LOW,
        MAX_ERROR,
        METHOD,
        N_BINS,
        HistogramAccumulator,
        TokenHistograms,
        bin_centres,
        bin_index,
    )
    from funnel_tl.measure.options import EXECUTORS, MeasureOptions
    from funnel_tl.measure.positions import (
        HeadPositionAccumulator,
        PositionAccumulator,
        bucket_one_hot,
        grown,
        position_sums,
    )
    from funnel_tl.measure.reads import ROLES, ReadSums, definition_roles
    from funnel_tl.measure.streaming import CHUNK_PROMPTS, PerPrompt, PromptDigest, TokenStream, chunked


def __getattr__(name: str):
    """A public name, imported from its module on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
