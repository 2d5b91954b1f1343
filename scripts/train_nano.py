"""Train the bundled nano models: small Pythia-like GPT-NeoX models shipped inside funnel_tl.

No machine here can download weights, so funnel_tl ships its own trained models of the
architecture the seed notebook studies: GPT-NeoX with parallel attention/MLP and rotary
embeddings on a quarter of each head (Pythia's ``rotary_pct=0.25``), untied input and output
embeddings, d_ff = 4·d_model, no dropout. They learn from English every CPython install has
(``funnel_tl.prompts.corpus``: ``pydoc_data.topics`` and the standard library's docstrings), 5% of the
text held out, with a byte-level BPE tokenizer trained on the training split.

Rebuild (CPU only, seeded; 14 to 19 minutes on one core of an AMD EPYC shared with other jobs)::

    python scripts/train_nano.py                 # writes funnel_tl/models/bundled/nano-{2l,4l,8l}
    python scripts/train_nano.py --models nano-2l --out /tmp/bundled   # one model elsewhere

Reproducible: the same seed, thread count, torch build and CPU give bit-identical weights (one
thread by default: a matmul split over several threads may sum in another order). The text comes
from the running Python, so another Python version trains on slightly different text; each model
card records the versions used.

Weights are stored in float16, as Pythia's hub checkpoints are; every held-out loss in the cards
is measured on the stored float16 weights, loaded back in float32 (what ``load_model`` gives on
the CPU), so the numbers describe the shipped files.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # train the funnel_tl of this checkout, installed or not

from funnel_tl.prompts import corpus  # noqa: E402
from funnel_tl.testing.toy import train_tokenizer  # noqa: E402

VOCAB_SIZE = 2048  # small enough that embeddings do not dominate d_model=64..128 models
N_CTX = 256  # training sequence length = the models' context (rotary: no position weights to store)
BATCH_SIZE = 4  # sequences per step: 1,024 tokens; in trials, more small steps beat fewer large ones


@dataclass(frozen=True)
class Spec:
    """One bundled model. Width grows with depth; every head is 32 wide, as in pythia-14m."""

    n_layers: int
    d_model: int
    steps: int
    lr: float  # peak; tiny models take a higher rate than Pythia's 1e-3 (14m) .. 6e-4 (160m)
    checkpoints: tuple[int, ...] = ()  # steps saved under checkpoints/step<N> besides the final one

    @property
    def n_heads(self) -> int:
        return self.d_model // 32


SPECS = {
    # Peak rates from 600-step trials (held-out loss at 614k tokens): the 2- and 4-layer models
    # learn fastest at 6e-3..8e-3, the 8-layer one at 2.5e-3 (5e-3 was worse).
    "nano-2l": Spec(n_layers=2, d_model=64, steps=2400, lr=8e-3),
    # Log-spaced checkpoints, like Pythia's step0, 1, 2, 4, ..., 512, 1000: most change is early.
    "nano-4l": Spec(n_layers=4, d_model=96, steps=2400, lr=6e-3, checkpoints=(0, 16, 64, 256, 1024)),
    "nano-8l": Spec(n_layers=8, d_model=128, steps=2400, lr=3e-3),
}

WARMUP_STEPS = 50  # linear warm-up, then cosine decay to 10% of the peak (Pythia's schedule)
WEIGHT_DECAY = 0.01  # Pythia's
BETAS = (0.9, 0.95)  # Pythia's
GRAD_CLIP = 1.0  # Pythia's


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """Documents concatenated, each followed by <|endoftext|> (how Pythia packs the Pile)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for row in tokenizer(texts)["input_ids"]:
        ids.extend(row)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def make_config(spec: Spec):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=spec.d_model,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=spec.n_heads,
        intermediate_size=4 * spec.d_model,
        max_position_embeddings=N_CTX,
        rotary_pct=0.25,
        rotary_emb_base=10000,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_act="gelu",
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )


def learning_rate(step: int, spec: Spec) -> float:
    if step < WARMUP_STEPS:
        return spec.lr * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, spec.steps - WARMUP_STEPS)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model, stream: torch.Tensor) -> float:
    """Mean next-token loss (nats) over the held-out stream cut into N_CTX-token windows."""
    n_windows = (len(stream) - 1) // N_CTX
    total, count = 0.0, 0
    for start in range(0, n_windows, 16):
        rows = range(start, min(start + 16, n_windows))
        inputs = torch.stack([stream[r * N_CTX : r * N_CTX + N_CTX] for r in rows])  # [batch, pos]
        targets = torch.stack([stream[r * N_CTX + 1 : r * N_CTX + N_CTX + 1] for r in rows])  # [batch, pos]
        logits = model(input_ids=inputs).logits.float()  # [batch, pos, vocab]
        total += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return total / count


def save_checkpoint(model, tokenizer, folder: Path, heldout: torch.Tensor) -> float:
    """Save in float16 and return the held-out loss of exactly what was saved."""
    from transformers import AutoModelForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(torch.float16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # The tensors are float16 but the model runs in float32, as trained: say so in config.json, so
    # that HF's dtype="auto" (the default of transformers 5) loads float32, which holds every
    # float16 value exactly. And name the tokenizer class every transformers version knows (5.x
    # writes its own TokenizersBackend, which 4.x cannot load).
    _edit_json(folder / "config.json", dtype="float32")
    _edit_json(folder / "tokenizer_config.json", tokenizer_class="PreTrainedTokenizerFast")
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return heldout_loss(saved, heldout)


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def train(
    name: str, spec: Spec, tokenizer, train_stream: torch.Tensor, heldout: torch.Tensor, folder: Path, seed: int, log
) -> dict:
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = make_config(spec)
    config._attn_implementation = "sdpa"  # training speed only; the saved config does not keep it
    model = GPTNeoXForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]  # biases and LayerNorm
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=BETAS,
    )
    generator = torch.Generator().manual_seed(seed)
    tokens_per_step = BATCH_SIZE * N_CTX
    log(
        f"{name}: {spec.n_layers} layers, d_model {spec.d_model}, {spec.n_heads} heads, {n_params:,} parameters, "
        f"{spec.steps} steps of {tokens_per_step} tokens"
    )
    saved_steps = sorted(set(spec.checkpoints) | ({spec.steps} if spec.checkpoints else set()))
    checkpoints = []
    started = time.time()
    recent: list[float] = []
    train_loss = float("nan")
    for step in range(spec.steps + 1):
        if step in saved_steps:
            model.eval()
            loss = save_checkpoint(model, tokenizer, folder / "checkpoints" / f"step{step}", heldout)
            checkpoints.append({"step": step, "tokens": step * tokens_per_step, "heldout_loss": round(loss, 4)})
            log(f"  {name} step {step}: held-out loss {loss:.4f} (saved)")
            model.train()
        if step == spec.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, spec)
        starts = torch.randint(0, len(train_stream) - N_CTX - 1, (BATCH_SIZE,), generator=generator)
        batch = torch.stack([train_stream[s : s + N_CTX + 1] for s in starts.tolist()])  # [batch, pos + 1]
        logits = model(input_ids=batch[:, :-1]).logits  # [batch, pos, vocab]
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recent.append(loss.item())
        if (step + 1) % 50 == 0:
            train_loss = sum(recent) / len(recent)
            log(f"  {name} step {step + 1}: train loss {train_loss:.4f} ({time.time() - started:.0f} s)")
            recent = []
    model.eval()
    final_loss = save_checkpoint(model, tokenizer, folder, heldout)
    seconds = time.time() - started
    log(f"{name}: held-out loss {final_loss:.4f}, {seconds:.0f} s")
    return {
        "name": name,
        "spec": asdict(spec),
        "n_heads": spec.n_heads,
        "n_parameters": n_params,
        "tokens_per_step": tokens_per_step,
        "tokens_seen": spec.steps * tokens_per_step,
        "heldout_loss": round(final_loss, 4),
        "train_loss_last_50_steps": round(train_loss, 4),
        "checkpoints": checkpoints,
        "seconds": round(seconds),
    }


def model_card(record: dict, meta: dict) -> str:
    spec = record["spec"]
    d = spec["d_model"]
    name = record["name"]
    lines = [
        f"# {name}",
        "",
        f"A small GPT-NeoX language model trained from scratch for funnel_tl, shaped like Pythia: "
        f"parallel attention and MLP, rotary embeddings on 25% of each head's dimensions, untied "
        f"embeddings. It is the offline stand-in for a Pythia model, not a useful language model: "
        f"it has seen {record['tokens_seen']:,} tokens of Python documentation.",
        "",
        "```python",
        "from funnel_tl import load_model, measure_gains",
        f'model = load_model("{name}")',
        'result = measure_gains(model, "seed")',
        "```",
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        f"| layers | {spec['n_layers']} |",
        f"| d_model | {d} |",
        f"| heads | {record['n_heads']} (32 dimensions each, 8 of them rotary) |",
        f"| d_ff | {4 * d} (GELU) |",
        f"| context | {meta['n_ctx']} tokens |",
        f"| vocabulary | {meta['vocab_size']} (byte-level BPE, no BOS added, `<|endoftext|>` = 0) |",
        f"| parameters | {record['n_parameters']:,} |",
        "| block | `use_parallel_residual=True`: x + attn(ln1(x)) + mlp(ln2(x)) |",
        "| stored as | float16 safetensors, as Pythia's hub weights (`config.json` says float32: it loads and runs "
        "in float32, as trained) |",
        "",
        "## Training",
        "",
        f"- Text: `pydoc_data.topics` and the standard library's docstrings of CPython "
        f"{meta['python']} (`funnel_tl/prompts/corpus.py`), {meta['train_chars']:,} characters "
        f"({meta['train_tokens']:,} tokens) for training; {meta['heldout_documents']} documents, "
        f"{meta['heldout_chars']:,} characters ({meta['heldout_tokens']:,} tokens, "
        f"{meta['heldout_fraction']:.1%} of the text), held out by a hash of their names.",
        "- Tokenizer: byte-level BPE trained with `tokenizers` on the training split only.",
        f"- {spec['steps']} steps of {BATCH_SIZE} × {meta['n_ctx']} = {record['tokens_per_step']:,} tokens "
        f"(random windows of the concatenated documents, each ended by `<|endoftext|>`): "
        f"{record['tokens_seen']:,} tokens seen, {record['tokens_seen'] / meta['train_tokens']:.1f} epochs.",
        f"- AdamW, betas {BETAS}, weight decay {WEIGHT_DECAY} (not on biases and LayerNorms), peak learning "
        f"rate {spec['lr']}, {WARMUP_STEPS} warm-up steps then cosine decay to 10%, gradient clipping "
        f"{GRAD_CLIP}, float32, seed {meta['seed']}, {meta['threads']} CPU thread(s).",
        f"- Took {record['seconds']} s on {meta['cpu']} (torch {meta['torch']}, transformers "
        f"{meta['transformers']}, tokenizers {meta['tokenizers']}).",
        "",
        "## Held-out loss",
        "",
        f"Mean next-token loss in nats on the held-out text ({meta['heldout_tokens']:,} tokens in "
        f"{meta['n_ctx']}-token windows), measured on the stored float16 weights. "
        f"A uniform guess scores ln({meta['vocab_size']}) = {math.log(meta['vocab_size']):.3f}.",
        "",
    ]
    if record["checkpoints"]:
        lines += [
            "Training checkpoints ship in `checkpoints/step<N>/` (full HF checkpoints), loadable as "
            f'`load_model("{name}", revision="step<N>")` like Pythia\'s hub revisions; '
            f'`funnel_tl.bundled_checkpoints("{name}")` lists them.',
            "",
            "| step | tokens seen | held-out loss |",
            "|---:|---:|---:|",
        ]
        lines += [f"| {c['step']} | {c['tokens']:,} | {c['heldout_loss']:.4f} |" for c in record["checkpoints"]]
    else:
        lines += [
            "| step | tokens seen | held-out loss |",
            "|---:|---:|---:|",
            f"| {spec['steps']} | {record['tokens_seen']:,} | {record['heldout_loss']:.4f} |",
        ]
    lines += [
        "",
        f"Training loss over the last 50 steps: {record['train_loss_last_50_steps']:.4f}.",
        "",
        "## Rebuild",
        "",
        "From the repository root (the whole suite is trained by one command; all models share the tokenizer):",
        "",
        "```bash",
        meta["command"],
        "```",
        "",
        f"Seeded: the same seed, thread count, torch build and CPU give bit-identical weights. The "
        f"text comes from the running Python, so rebuild with CPython {meta['python']} to get these weights.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "funnel_tl" / "models" / "bundled",
        help="folder that receives one subfolder per model (default: funnel_tl/models/bundled)",
    )
    parser.add_argument("--models", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: reproducible)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # one bar per saved checkpoint drowns the log
    torch.use_deterministic_algorithms(True)

    def log(message):
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    train_docs = [text for _, text in corpus.documents("train")]
    heldout_docs = [text for _, text in corpus.documents("heldout")]
    tokenizer = train_tokenizer(VOCAB_SIZE, texts=train_docs)
    train_stream = token_stream(tokenizer, train_docs)
    heldout = token_stream(tokenizer, heldout_docs)
    n_heldout_chars = sum(map(len, heldout_docs))
    n_train_chars = sum(map(len, train_docs))
    import tokenizers
    import transformers

    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "cpu": _cpu_name() or platform.machine(),
        "threads": args.threads,
        "seed": args.seed,
        "vocab_size": VOCAB_SIZE,
        "n_ctx": N_CTX,
        "train_chars": n_train_chars,
        "train_tokens": len(train_stream),
        "heldout_documents": len(heldout_docs),
        "heldout_chars": n_heldout_chars,
        "heldout_tokens": len(heldout),
        "heldout_fraction": n_heldout_chars / (n_heldout_chars + n_train_chars),
        "command": "python scripts/train_nano.py"
        + ("" if args.models == list(SPECS) else " --models " + " ".join(args.models))
        + ("" if args.seed == 0 else f" --seed {args.seed}")
        + ("" if args.threads == 1 else f" --threads {args.threads}"),
    }
    log(
        f"text: {n_train_chars:,} training characters ({len(train_stream):,} tokens), "
        f"{n_heldout_chars:,} held out ({len(heldout):,} tokens); Python {meta['python']}"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        # Build beside the destination and swap in at the end: an interrupted run leaves the old model whole.
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=args.out))
        try:
            record = train(name, SPECS[name], tokenizer, train_stream, heldout, staging, args.seed, log)
            (staging / "MODEL_CARD.md").write_text(model_card(record, meta), encoding="utf-8")
            # mkdtemp and safetensors create owner-only modes; an installed package must be readable by all.
            for path in [staging, *staging.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            destination = args.out / name
            if destination.exists():
                shutil.rmtree(destination)
            staging.rename(destination)
            log(f"wrote {destination}: {record}")
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return 0


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())
