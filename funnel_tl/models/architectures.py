"""Which activation is each component's input and output, for every model kind and block shape.

The one place that knows architectures. A *model kind* is how TransformerLens exposes the model:
a ``TransformerBridge`` (funnel_tl's own from ``load_model``, or one the user booted; TL 3.9 and
4.x) or a TL 3.x ``HookedTransformer``. A *block shape* is how a decoder block wires its norms:

==================  ===================================  ==========================  =============================
block shape         families (examples)                  u (seed input)              a, m (outputs)
==================  ===================================  ==========================  =============================
pre-norm            GPT-2, Llama, Mistral, Qwen, OPT     ln1 / ln2 output            the sublayer's output
parallel-two-norms  Pythia (GPT-NeoX), Falcon-40B        ln1 / ln2 output, both      the sublayer's output
                                                         reading resid_pre
parallel-one-norm   GPT-J, Falcon-7B, Phi-1/2, CodeGen   ln1 output for both         the sublayer's output
sandwich            Gemma 2, Gemma 3                     ln1 / ln2 output            *after* its post-norm (what
                                                                                     the residual stream receives)
post-norm           OLMo 2                               the stream itself (u = x):  after its post-norm
                                                         resid_pre / resid_mid
==================  ===================================  ==========================  =============================

Beyond the definition's own reads, every run reads what both definitions and the block shape need
(``HookPlan.roles``, the roles of ``funnel_tl.measure.reads``): u and the stream for both definitions, and
for sandwich and post-norm blocks each module's own output *before* its post-norm: the bridge's
``ln1_post.hook_in``/``ln2_post.hook_in`` (TL 3.9's bridge calls OLMo 2's post-norms ``ln1``/``ln2``:
``ln1.hook_in``), a ``HookedTransformer``'s ``ln1_post.hook_normalized`` times ``ln1_post.hook_scale``
(its RMSNorm has no input hook; ``x = hook_normalized * hook_scale`` exactly, ``HookPlan.scaled``;
OLMo 2: ``ln1``). The fast executor reads each at the HF module behind it (the post-norm's input).

Every norm output is read *after* its affine (what the module receives, as the seed's forward
hooks saw it). The bridge has that as ``ln1.hook_out``. ``HookedTransformer`` (TL >= 3.0) has no
such hook: its ``ln1.hook_normalized`` fires *before* the affine (``x = hook_normalized(x /
scale); return x * w + b``), whose norm is about √d_model whatever the weights. The plan then
names the hook *and* the norm whose affine completes the read (``HookPlan.affine``), and
``HookPlan.read`` applies it to the hooked activation before its norm is taken.

Adding a family is normally nothing here (TransformerLens names its hooks the same way for every
family of one shape) plus one entry in ``toy.FAMILIES`` and ``reference.py``'s layouts, whose
test compares both definitions with forward hooks on the HF modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from funnel_tl.errors import FunnelError
from funnel_tl.models.identity import is_bridge, model_name
from funnel_tl.models.processed import check_unprocessed

BLOCK_SHAPES = ("pre-norm", "parallel-two-norms", "parallel-one-norm", "sandwich", "post-norm")

# Post-norm families (TL 3.9 ``POST_NORM_ARCHITECTURES``): on HookedTransformer and TL 3.9's bridge
# ln1/ln2 are applied to the sublayer *output*, and the sublayer reads the stream itself.
_POST_NORM_HF_ARCHITECTURES = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")

# TransformerLens classes that hold models this package does not measure.
_NOT_DECODER_CLASSES = ("HookedEncoder", "HookedEncoderDecoder", "HookedAudioEncoder", "BertNextSentencePrediction")
# Causal LMs without attention + MLP blocks (state-space and recurrent models).
_NOT_TRANSFORMER_MODEL_TYPES = ("mamba", "mamba2", "falcon_mamba", "rwkv", "rwkv7", "recurrent_gemma", "hyenadna")
# Encoder-only model types: a checkpoint saved from their base class ("BertModel") names no head
# that would give it away, so the type is checked too (bidirectional attention: no causal stream).
_ENCODER_MODEL_TYPES = (
    "albert",
    "bert",
    "big_bird",
    "camembert",
    "convbert",
    "data2vec-text",
    "deberta",
    "deberta-v2",
    "distilbert",
    "electra",
    "ernie",
    "esm",
    "flaubert",
    "funnel",
    "hubert",
    "longformer",
    "megatron-bert",
    "modernbert",
    "mpnet",
    "nezha",
    "nomic_bert",
    "rembert",
    "roberta",
    "roberta-prelayernorm",
    "roc_bert",
    "squeezebert",
    "wav2vec2",
    "xlm",
    "xlm-roberta",
    "xlm-roberta-xl",
)
# The hooks every measured block must have: the residual stream and what each sublayer adds.
_REQUIRED_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "hook_resid_post")


@dataclass(frozen=True)
class HookPlan:
    """Which hook (name within a block) is read as each component's input and output.

    ``affine`` maps a hook suffix to the norm module (within the block) whose affine must still be
    applied to that hook's activation to get what the sublayer receives: ``{"ln1.hook_normalized":
    "ln1"}`` on a ``HookedTransformer``, empty on a bridge. Always read activations through
    ``read``; it is the identity for every suffix not in ``affine``.
    """

    block_shape: str
    parallel_blocks: bool
    inputs: dict[str, str]  # component -> hook suffix, e.g. "attn" -> "ln1.hook_out"
    outputs: dict[str, str]
    affine: dict[str, str] = field(default_factory=dict)  # hook suffix -> norm module, e.g. "ln1"
    # Every tensor one forward reads, by role (``funnel_tl.measure.reads.ROLES``): role -> hook suffix. The
    # definition's inputs and outputs are among them.
    roles: dict[str, str] = field(default_factory=dict)
    # hook suffix -> the hook whose value multiplies it back to the tensor read: a HookedTransformer's
    # RMSNorm ``hook_normalized`` (x / scale) times its ``hook_scale`` is the norm's input x.
    scaled: dict[str, str] = field(default_factory=dict)

    @property
    def suffixes(self) -> list[str]:
        """The hooks the definition's gains read (``inputs`` and ``outputs``)."""
        return sorted(set(self.inputs.values()) | set(self.outputs.values()))

    @property
    def norm_suffixes(self) -> list[str]:
        """Every hook whose norm a run takes: the definition's and the other roles' (``roles``)."""
        return sorted(set(self.suffixes) | set(self.roles.values()))

    @property
    def read_suffixes(self) -> list[str]:
        """Every hook a run reads: ``norm_suffixes`` and the scales some of them need (``scaled``)."""
        return sorted(set(self.norm_suffixes) | set(self.scaled.values()))

    def role_of(self, suffix: str) -> list[str]:
        """The roles read from ``suffix`` (one hook can serve several: post-norm u is the stream)."""
        return [role for role, read in self.roles.items() if read == suffix]

    def read(
        self, model, layer: int, suffix: str, activation: torch.Tensor, scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The tensor whose norm is taken, from the activation of ``blocks.{layer}.{suffix}``.

        ``[..., d_model]`` in, ``[..., d_model]`` out: ``activation * w + b`` of the planned norm
        (``* w`` for RMSNorm), exactly as ``LayerNorm.forward`` finishes after its hook; for a
        suffix in ``scaled``, ``activation * scale`` (``scale``: that layer's ``[..., 1]`` hook_scale).
        """
        if suffix in self.scaled:
            if scale is None:
                raise FunnelError(
                    f"blocks.{layer}.{suffix} needs blocks.{layer}.{self.scaled[suffix]}, which did not "
                    "fire before it: this architecture's hooks are not in the standard order"
                )
            return activation.float() * scale.float()
        norm_name = self.affine.get(suffix)
        if norm_name is None:
            return activation
        norm = getattr(model.blocks[layer], norm_name)
        weight = norm.w
        activation = activation.to(weight.dtype) * weight  # TL casts to cfg.dtype, then applies w
        bias = getattr(norm, "b", None)
        return activation + bias if bias is not None else activation

    def describe(self) -> dict[str, str]:
        """What is read, in words, for results.json: ``{"block_shape": "pre-norm", "attn_in": "ln1.hook_out", ...}``."""

        def words(suffix: str) -> str:
            norm_name = self.affine.get(suffix)
            return f"{suffix} * {norm_name}.w (+ {norm_name}.b)" if norm_name else suffix

        described = {"block_shape": self.block_shape}
        for component in self.inputs:
            described[f"{component}_in"] = words(self.inputs[component])
            described[f"{component}_out"] = words(self.outputs[component])
        return described

    def describe_roles(self) -> dict[str, str]:
        """What each role is read from, in words: ``{"attn_in": "ln1.hook_out", "attn_module_out": ...}``."""

        def words(suffix: str) -> str:
            norm_name = self.affine.get(suffix)
            if norm_name:
                return f"{suffix} * {norm_name}.w (+ {norm_name}.b)"
            return f"{suffix} * {self.scaled[suffix]}" if suffix in self.scaled else suffix

        return {role: words(suffix) for role, suffix in self.roles.items()}


def hf_architecture(model) -> str:
    """The HF class the model came from (``"Olmo2ForCausalLM"``): HookedTransformer's
    ``cfg.original_architecture``, the bridge's ``cfg.architecture``; ``""`` if unknown."""
    cfg = model.cfg
    return str(getattr(cfg, "original_architecture", None) or getattr(cfg, "architecture", None) or "")


def _has(model, suffix: str, layer: int = 0) -> bool:
    return f"blocks.{layer}.{suffix}" in model.hook_dict


def check_decoder_only(model) -> None:
    """Refuse, in one line, anything but a decoder-only transformer with standard block hooks.

    Encoder-only (BERT), encoder-decoder (T5), state-space (Mamba) and multimodal wrappers (LLaVA,
    Gemma 3 vision) have no residual stream of attention + MLP blocks that the gains describe.
    Anything that is no TransformerLens model at all (a name, None, a transformers model given to
    ``gains_from_cache``) is refused with what to pass.
    """
    if not (hasattr(model, "cfg") and hasattr(model, "hook_dict")):
        shown = repr(str(model)) if isinstance(model, str) else type(model).__name__
        raise FunnelError(
            f"expected a TransformerLens model, got {shown}: pass funnel_tl.load_model(NAME_OR_DIR), "
            "a TransformerBridge or a HookedTransformer"
        )
    cfg = model.cfg
    architecture = hf_architecture(model)
    what = f"{model_name(model)}" + (f" ({architecture})" if architecture else "")
    refuse = (
        type(model).__name__ in _NOT_DECODER_CLASSES
        or bool(getattr(cfg, "is_encoder_decoder", False))
        or ("For" in architecture and not architecture.endswith("ForCausalLM"))
    )
    n_layers = int(getattr(cfg, "n_layers", 0) or 0)
    if not refuse and n_layers < 1:
        raise FunnelError(
            f"{what} has {n_layers} layers, so there is no layer to measure: give a model with at least one layer"
        )
    hook_dict = getattr(model, "hook_dict", None)  # a bridge builds it anew on each access: read it once
    if not refuse:
        refuse = hook_dict is None or not all(
            f"blocks.{layer}.{suffix}" in hook_dict for layer in range(n_layers) for suffix in _REQUIRED_HOOKS
        )
    if refuse:
        raise _not_a_decoder(what)


def check_decoder_config(config: dict, name: str) -> None:
    """The same refusals as ``check_decoder_only``, from a checkpoint's config.json before any loading."""
    classes = [str(c) for c in config.get("architectures") or []]
    model_type = str(config.get("model_type", ""))
    not_decoder = (
        bool(config.get("is_encoder_decoder", False))
        or any("For" in c and not c.endswith("ForCausalLM") for c in classes)
        or model_type in _NOT_TRANSFORMER_MODEL_TYPES
        or model_type in _ENCODER_MODEL_TYPES
    )
    if not_decoder:
        raise _not_a_decoder(f"{name} ({classes[0] if classes else model_type})")
    key, n_layers = config_n_layers(config)
    if n_layers is not None and n_layers < 1:
        raise FunnelError(
            f"{name}: its config names {n_layers} layers ({key}: {n_layers}), so there is no layer to "
            f"measure: give a checkpoint with at least one layer (or fix {key})"
        )


# Where HF configs keep their number of layers, by family (GPT-2 and BLOOM: n_layer; GPT-Neo: num_layers).
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def config_n_layers(config: dict | None) -> tuple[str | None, int | None]:
    """``(key, number of layers)`` a config dict states, or ``(None, None)``.

    >>> config_n_layers({"model_type": "gpt2", "n_layer": 12})
    ('n_layer', 12)
    """
    for key in _LAYER_COUNT_KEYS:
        value = config.get(key) if isinstance(config, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return key, value
    return None, None


def _not_a_decoder(what: str) -> FunnelError:
    return FunnelError(
        f"{what} is not a decoder-only transformer that funnel_tl supports: it measures causal language "
        "models whose blocks add attention and MLP outputs to a residual stream (docs/own-models.md: verified families)"
    )


def is_parallel(model) -> bool:
    """Parallel blocks (Pythia, GPT-J, Falcon, Phi): attention and MLP both read ``resid_pre``."""
    if bool(getattr(model.cfg, "parallel_attn_mlp", False)):
        return True
    # A bridge with a parallel block (ParallelBlockBridge) drops hook_resid_mid, as HookedTransformer does.
    return is_bridge(model) and not _has(model, "hook_resid_mid")


def block_shape(model) -> str:
    """One of ``BLOCK_SHAPES`` (see the module docstring)."""
    cfg = model.cfg
    if hf_architecture(model) in _POST_NORM_HF_ARCHITECTURES:
        # By name: HookedTransformer and TL 3.9's bridge call OLMo 2's post-norms ln1/ln2.
        return "post-norm"
    if is_bridge(model):
        post_attn_norm, pre_attn_norm = _has(model, "ln1_post.hook_out"), _has(model, "ln1.hook_out")
        if post_attn_norm:
            return "sandwich" if pre_attn_norm else "post-norm"
    elif getattr(cfg, "use_normalization_before_and_after", False):
        return "sandwich"
    if is_parallel(model):
        two = _has(model, "ln2.hook_out") or _has(model, "ln2.hook_normalized")
        return "parallel-two-norms" if two else "parallel-one-norm"
    return "pre-norm"


def layer_norm_output(model, which: str) -> tuple[str, str | None]:
    """``(hook suffix, norm whose affine completes the read, or None)`` for what a sublayer receives.

    ``which`` is ``"ln1"`` (before attention) or ``"ln2"`` (before the MLP). The bridge's
    ``ln1.hook_out`` is after the affine: read as is. ``HookedTransformer``'s
    ``ln1.hook_normalized`` is *before* it (TL >= 3.0): read with ``ln1``'s ``w`` and ``b``.
    Parallel blocks with one norm for both sublayers (GPT-J on the bridge) have no ``ln2``.
    """
    for candidate in (which, "ln1") if which == "ln2" else (which,):
        if _has(model, f"{candidate}.hook_out"):
            return f"{candidate}.hook_out", None
        if not is_bridge(model) and _has(model, f"{candidate}.hook_normalized"):
            norm = getattr(model.blocks[0], candidate, None)
            if norm is None or not hasattr(norm, "w"):
                # LayerNormPre/RMSNormPre: fold_ln took the affine away (processed.py refuses that first).
                break
            return f"{candidate}.hook_normalized", candidate
    raise FunnelError(
        f"{model_name(model)} has no {which} norm output to read: the seed definition needs what each sublayer "
        "receives; use --definition residual"
    )


def plan_hooks(model, definition: str) -> HookPlan:
    """The hooks ``definition`` reads on ``model``.

    Every measurement starts here, so this is also where a model is refused: anything but a
    decoder-only transformer, or weights TransformerLens processed. ``definition``: ``"seed"`` or
    ``"residual"``, as ``MeasureOptions`` checked it.
    """
    check_decoder_only(model)
    check_unprocessed(model)
    shape = block_shape(model)
    parallel = shape.startswith("parallel")
    residual_inputs = {"attn": "hook_resid_pre", "mlp": "hook_resid_pre" if parallel else "hook_resid_mid"}
    affine: dict[str, str] = {}
    if definition == "residual" or shape == "post-norm":
        # Post-norm: no norm before the sublayer, so it receives the stream itself (u = x).
        inputs = dict(residual_inputs)
    else:
        inputs = {}
        for component, norm in (("attn", "ln1"), ("mlp", "ln2")):
            suffix, affine_norm = layer_norm_output(model, norm)
            inputs[component] = suffix
            if affine_norm is not None:
                affine[suffix] = affine_norm
    inputs["block"] = "hook_resid_pre"
    # On both kinds hook_attn_out/hook_mlp_out fire after a post-norm (TL aligns them with what the
    # stream receives); the residual identity check in gains.py fails loudly if that ever changes.
    outputs = {"attn": "hook_attn_out", "mlp": "hook_mlp_out", "block": "hook_resid_post"}
    roles, scaled = _roles(model, shape, parallel, affine)
    return HookPlan(
        block_shape=shape,
        parallel_blocks=parallel,
        inputs=inputs,
        outputs=outputs,
        affine=affine,
        roles=roles,
        scaled=scaled,
    )


def _roles(model, shape: str, parallel: bool, affine: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """``(role -> hook suffix, scaled)`` of every tensor a run reads beside its definition's (see
    ``funnel_tl.measure.reads``): both definitions' inputs, and a post-normed block's module outputs.
    ``affine`` receives the affine of u's hooks on a HookedTransformer, as for the seed definition."""
    roles = {
        "resid_pre": "hook_resid_pre",
        "resid_post": "hook_resid_post",
        "attn_out": "hook_attn_out",
        "mlp_out": "hook_mlp_out",
    }
    if not parallel:
        roles["resid_mid"] = "hook_resid_mid"
    if shape == "post-norm":
        roles |= {"attn_in": "hook_resid_pre", "mlp_in": roles["resid_mid"] if not parallel else "hook_resid_pre"}
    else:
        try:
            for component, norm in (("attn", "ln1"), ("mlp", "ln2")):
                suffix, affine_norm = layer_norm_output(model, norm)
                roles[f"{component}_in"] = suffix
                if affine_norm is not None:
                    affine[suffix] = affine_norm
        except FunnelError:  # no norm output to read: the residual definition alone
            roles.pop("attn_in", None)
    scaled: dict[str, str] = {}
    if shape in ("sandwich", "post-norm"):
        for component, norm in (("attn", "ln1"), ("mlp", "ln2")):
            read = _module_output(model, shape, norm)
            if read is None:
                break
            roles[f"{component}_module_out"], scale = read
            if scale is not None:
                scaled[read[0]] = scale
    return roles, scaled


def _module_output(model, shape: str, norm: str) -> tuple[str, str | None] | None:
    """``(hook suffix, scale hook or None)`` of a sublayer's own output before its post-norm
    (``norm``: ``"ln1"`` after attention, ``"ln2"`` after the MLP); None where no hook holds it."""
    # Sandwich: the norm after the sublayer is ln*_post; post-norm: ln*_post on TL 4's bridge,
    # ln* on TL 3.9's bridge and on HookedTransformer.
    for name in (f"{norm}_post", norm) if shape == "post-norm" else (f"{norm}_post",):
        if is_bridge(model):
            if _has(model, f"{name}.hook_in"):
                return f"{name}.hook_in", None
        elif _has(model, f"{name}.hook_normalized") and _has(model, f"{name}.hook_scale"):
            module = getattr(model.blocks[0], name, None)
            if type(module).__name__ == "RMSNorm":  # x / scale; a LayerNorm's centring is not undone by its scale
                return f"{name}.hook_normalized", f"{name}.hook_scale"
    return None


def check_heads_add_up(model, plan: HookPlan) -> str:
    """The hook suffix where the per-head outputs add up: Σ_i z_i W_O^i + b_O equals it.

    ``hook_attn_out`` where no norm follows the attention. Sandwich and post-norm blocks normalize
    the heads' sum before the stream receives it, so no head has a share of ``a``; their heads
    add up to the attention module's own output before that post-norm (``roles["attn_module_out"]``:
    ``ln1_post.hook_in`` on the bridge), where they are measured instead. Where that output has
    no hook, they are refused rather than approximated.
    """
    if plan.block_shape not in ("sandwich", "post-norm"):
        return "hook_attn_out"
    if "attn_module_out" in plan.roles:
        return plan.roles["attn_module_out"]
    raise FunnelError(
        f"{model_name(model)} has {plan.block_shape} blocks: the heads' summed output passes through a norm "
        "before the residual stream, and no hook holds the attention output before it, so it splits into no "
        "per-head shares; use measure_gains for its layers"
    )
