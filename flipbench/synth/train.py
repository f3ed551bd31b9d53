"""Train the bundled tiny Llama on the synth train splits: ``python -m flipbench.synth.train``.

Deterministic given the seed and thread count (seeded init, seeded data order, CPU kernels). Writes a
Hugging Face model directory (safetensors weights, tokenizer, ``training.json``) that loads offline with
``AutoModelForCausalLM`` / ``AutoTokenizer``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from flipbench.synth.corpus import Example, task_examples, world_examples
from flipbench.synth.generate import DEFAULT_OUT as DEFAULT_TASKS
from flipbench.synth.tokenizer import train_tokenizer

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "tiny"


@dataclass
class TrainConfig:
    """Model shape, optimisation and data mixture. Defaults produce the shipped model."""

    seed: int = 0
    vocab_size: int = 1024
    hidden_size: int = 128
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 384
    steps: int = 4000
    batch_docs: int = 32  # documents per step; each row is one document, as at evaluation
    lr: float = 3e-3
    warmup: int = 100
    weight_decay: float = 0.1
    target_weight: float = 3.0  # loss weight of the scored answer tokens relative to prompt tokens
    # Copies per epoch of the small sources: facts must be seen often to be memorised.
    mmlu_repeats: int = 8
    fact_repeats: int = 8
    qa_repeats: int = 2
    craft_repeats: int = 3
    # One thread: on a shared 2-core machine two OpenMP threads slow down several-fold as soon as another
    # process takes a core, and a fixed thread count keeps CPU float sums (hence the weights) reproducible.
    threads: int = 1
    log_every: int = 100


def training_examples(task_dir: Path, cfg: TrainConfig) -> list[Example]:
    """Train-split docs and world text, the small sources repeated as configured."""
    repeats = {"synth_mmlu": cfg.mmlu_repeats, "world:fact": cfg.fact_repeats, "world:qa": cfg.qa_repeats,
               "world:craft": cfg.craft_repeats}
    examples = task_examples(task_dir) + world_examples(task_dir)
    return [e for e in examples for _ in range(repeats.get(e.source, 1))]


@dataclass(frozen=True)
class Encoded:
    """A tokenised example: ids (``<s>`` … ``</s>``), per-token loss weights, where the target starts."""

    ids: list[int]
    weights: list[float]
    target_start: int
    source: str


def encode(tokenizer, example: Example, target_weight: float) -> Encoded:
    """Tokenise one example; prompt and target are encoded together (as lm-eval does) and split at the
    prompt's length. Weight 0 on ``<s>`` (never predicted), ``target_weight`` on the target and ``</s>``."""
    ids = tokenizer.encode(example.text) + [tokenizer.eos_token_id]
    n_prompt = len(tokenizer.encode(example.prompt)) if example.target else len(ids)
    weights = [0.0] + [1.0] * (n_prompt - 1) + [target_weight] * (len(ids) - n_prompt)
    return Encoded(ids, weights, n_prompt, example.source)


def batches(encoded: list[Encoded], batch_docs: int, rng: random.Random):
    """Endless batches: each epoch shuffled, then grouped by length so rows need little padding."""
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        chunk = batch_docs * 32
        epoch = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: len(encoded[i].ids))
            epoch += [part[i:i + batch_docs] for i in range(0, len(part), batch_docs)]
        rng.shuffle(epoch)
        yield from epoch


def collate(encoded: list[Encoded], rows: list[int], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask, loss weights and target mask, each (B, T), for one batch."""
    width = max(len(encoded[i].ids) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    weights = torch.zeros((len(rows), width))
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, i in enumerate(rows):
        n = len(encoded[i].ids)
        ids[r, :n], mask[r, :n] = torch.tensor(encoded[i].ids), 1
        weights[r, :n] = torch.tensor(encoded[i].weights)
        target[r, encoded[i].target_start:n] = True
    return ids, mask, weights, target


def build_model(cfg: TrainConfig, tokenizer) -> LlamaForCausalLM:
    """A small Llama whose embedding is tied to the output head (halves the parameter count at this size)."""
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.layers,
                         num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         intermediate_size=cfg.intermediate_size, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def _optimizer(model, cfg: TrainConfig):
    # Decay matrices only; norms' gains stay free.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))

    def schedule(step):  # linear warmup, cosine decay to 10% of the peak
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def fit(model, encoded: list[Encoded], cfg: TrainConfig, pad_id: int, log=print) -> list[float]:
    """The training loop: weighted next-token cross-entropy. Returns the loss per step.

    Logs the loss and, per task, the cross-entropy on target tokens only: the number that shows when a
    skill (copying, letter lookup) starts to be learned.
    """
    optimizer, scheduler = _optimizer(model, cfg)
    stream = batches(encoded, cfg.batch_docs, random.Random(f"{cfg.seed}:batches"))
    losses, window, start = [], {}, time.time()
    model.train()
    for step in range(cfg.steps):
        rows = next(stream)
        ids, mask, weights, target = collate(encoded, rows, pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
        ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        loss = (ce * weights[:, 1:]).sum() / weights[:, 1:].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        for r, i in enumerate(rows):
            if encoded[i].target_start < len(encoded[i].ids):
                window.setdefault(encoded[i].source, []).append(ce[r][target[r, 1:]].mean().item())
        if (step + 1) % cfg.log_every == 0 or step == cfg.steps - 1:
            per_task = "  ".join(f"{s.removeprefix('synth_')} {sum(v) / len(v):.3f}" for s, v in sorted(window.items()))
            recent = losses[-cfg.log_every:]
            log(f"step {step + 1:5d}  loss {sum(recent) / len(recent):.4f}  target CE: {per_task}  {time.time() - start:5.0f}s")
            window = {}
    model.eval()
    return losses


def train(task_dir: Path, out: Path, cfg: TrainConfig, log=print) -> dict:
    """Tokenizer, model and training loop end to end; saves to ``out`` and returns the training facts."""
    start = time.time()
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    examples = training_examples(task_dir, cfg)
    tokenizer = train_tokenizer([e.text for e in examples], cfg.vocab_size)
    encoded = [encode(tokenizer, e, cfg.target_weight) for e in examples]
    model = build_model(cfg, tokenizer)
    losses = fit(model, encoded, cfg, tokenizer.pad_token_id, log)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    sources = sorted({e.source for e in examples})
    facts = {
        "seed": cfg.seed, "config": asdict(cfg), "seconds": round(time.time() - start, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_docs": {s: sum(e.source == s for e in examples) for s in sources},
        "tokens_per_epoch": sum(len(e.ids) for e in encoded),
        "tokens_seen": cfg.steps * cfg.batch_docs * sum(len(e.ids) for e in encoded) // len(encoded),
        "final_loss": round(sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:]), 4),
        "torch": torch.__version__,
    }
    (out / "training.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    return facts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=Path, default=DEFAULT_TASKS, help="folder written by flipbench.synth.generate")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other TrainConfig fields")
    args = parser.parse_args(argv)
    cfg = TrainConfig(steps=args.steps, seed=args.seed)
    for item in args.set:
        key, value = item.split("=", 1)
        if not hasattr(cfg, key):
            raise SystemExit(f"unknown TrainConfig field {key!r}; known: {', '.join(asdict(cfg))}")
        setattr(cfg, key, type(getattr(cfg, key))(value))
    facts = train(args.tasks, args.out, cfg)
    print(json.dumps({k: facts[k] for k in ("seconds", "parameters", "final_loss")}))


if __name__ == "__main__":
    main()
