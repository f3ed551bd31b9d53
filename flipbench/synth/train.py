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
    hidden_size: int = 256
    layers: int = 4
    heads: int = 4
    intermediate_size: int = 688
    steps: int = 1200
    batch_docs: int = 64  # documents per step; each row is one document, as at evaluation
    lr: float = 2e-3
    warmup: int = 60
    weight_decay: float = 0.1
    target_weight: float = 3.0  # loss weight of the scored answer tokens relative to prompt tokens
    fact_repeats: int = 6  # world-text copies per epoch: facts must be seen often to be memorised
    craft_repeats: int = 3
    # One thread: on a shared 2-core machine two OpenMP threads slow down several-fold as soon as another
    # process takes a core, and a fixed thread count keeps CPU float sums (hence the weights) reproducible.
    threads: int = 1


def training_examples(task_dir: Path, cfg: TrainConfig) -> list[Example]:
    """Train-split docs once each, world text repeated as configured."""
    repeats = {"world:fact": cfg.fact_repeats, "world:craft": cfg.craft_repeats}
    world = [e for e in world_examples(task_dir) for _ in range(repeats[e.source])]
    return task_examples(task_dir) + world


def encode(tokenizer, example: Example, target_weight: float) -> tuple[list[int], list[float]]:
    """Token ids (``<s>`` … ``</s>``) and per-token loss weights for predicting each token.

    Prompt and target are encoded together, as lm-eval does, and split at the prompt's length.
    """
    ids = tokenizer.encode(example.text) + [tokenizer.eos_token_id]
    n_prompt = len(tokenizer.encode(example.prompt)) if example.target else len(ids)
    weights = [0.0] + [1.0] * (n_prompt - 1) + [target_weight] * (len(ids) - n_prompt)
    return ids, weights


def batches(encoded: list, batch_docs: int, rng: random.Random):
    """Endless batches: each epoch shuffled, then grouped by length so rows need little padding."""
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        chunk = batch_docs * 32
        epoch = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: len(encoded[i][0]))
            epoch += [part[i:i + batch_docs] for i in range(0, len(part), batch_docs)]
        rng.shuffle(epoch)
        yield from epoch


def collate(encoded: list, rows: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T), attention mask (B, T) and loss weights (B, T) for one batch."""
    width = max(len(encoded[i][0]) for i in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    weights = torch.zeros((len(rows), width))
    for r, i in enumerate(rows):
        n = len(encoded[i][0])
        ids[r, :n], mask[r, :n] = torch.tensor(encoded[i][0]), 1
        weights[r, :n] = torch.tensor(encoded[i][1])
    return ids, mask, weights


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


def fit(model, encoded: list, cfg: TrainConfig, pad_id: int, log=print) -> list[float]:
    """The training loop: weighted next-token cross-entropy. Returns the loss per step."""
    optimizer, scheduler = _optimizer(model, cfg)
    stream = batches(encoded, cfg.batch_docs, random.Random(f"{cfg.seed}:batches"))
    losses, start = [], time.time()
    model.train()
    for step in range(cfg.steps):
        ids, mask, weights = collate(encoded, next(stream), pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
        w = weights[:, 1:].reshape(-1)
        loss = (ce * w).sum() / w.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}  loss {sum(losses[-50:]) / len(losses[-50:]):.4f}  {time.time() - start:6.0f}s")
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
        "tokens_per_epoch": sum(len(ids) for ids, _ in encoded),
        "tokens_seen": cfg.steps * cfg.batch_docs * sum(len(ids) for ids, _ in encoded) // len(encoded),
        "final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
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
    args = parser.parse_args(argv)
    facts = train(args.tasks, args.out, TrainConfig(steps=args.steps, seed=args.seed))
    print(json.dumps({k: facts[k] for k in ("seconds", "parameters", "final_loss")}))


if __name__ == "__main__":
    main()
