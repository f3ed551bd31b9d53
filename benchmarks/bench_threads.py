"""Generation speed, and what a busy neighbour process does to it under each OpenMP wait policy.

    python -m benchmarks.bench_threads --model <model dir> --out results/bench [--rounds 2]

Greedy decoding one token per row and step through the KV cache (as transformers' ``generate`` steps when lm-eval's
HFLM calls it), timed apart from the prompt's forward pass, on GSM8k-style prompts (``--shots`` worked examples from the bundled synth_gsm8k task, then a question), a batch of
``--batch`` left-padded prompts, exactly ``--new-tokens`` new tokens per row. Each measurement is its own
process, because OpenMP reads its settings once, when torch loads. Cases (:data:`CASES`): the OpenMP runtime's
default, ``OMP_WAIT_POLICY=PASSIVE``, ``OMP_WAIT_POLICY=ACTIVE`` and ``GOMP_SPINCOUNT=10000``, each alone and
beside one busy torch process (a 256x256 matmul loop on its default threads, as a second evaluation on the same
cores would be). The cases run interleaved, rounds alternating their order; the table gives the median and
min-max per case. Writes threads.csv and threads.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from flipbench.tasks import BUNDLED_TASKS

PROMPTS = BUNDLED_TASKS / "synth" / "data"
# Environment per case: the OpenMP runtime's default (waiting threads spin a while before they sleep), flipbench's
# CLI default (they sleep at once), spinning only, and a short spin before sleeping.
CASES = {"default": {}, "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
         "OMP_WAIT_POLICY=ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"}, "GOMP_SPINCOUNT=10000": {"GOMP_SPINCOUNT": "10000"}}


def prompts(shots: int, batch: int) -> list[str]:
    train = [json.loads(line) for line in (PROMPTS / "synth_gsm8k_train.jsonl").read_text().splitlines()[:shots]]
    test = [json.loads(line) for line in (PROMPTS / "synth_gsm8k_test.jsonl").read_text().splitlines()[:batch]]
    context = "".join(f"Question: {row['question']}\nAnswer: {row['answer']}\n\n" for row in train)
    return [f"{context}Question: {row['question']}\nAnswer:" for row in test]


def worker(model_dir: str, batch: int, new_tokens: int, shots: int) -> dict:
    """One measurement in this process: prefill tokens/s (one forward over the padded prompts) and decode tokens/s
    (greedy steps of one token per row through the KV cache, as ``generate`` takes them, timed on their own)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"  # as lm-eval batches generation requests
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = tokenizer(prompts(shots, batch), return_tensors="pt", padding=True)
    mask = inputs["attention_mask"]
    with torch.inference_mode():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)  # warm-up
        start = time.perf_counter()
        out = model(**inputs, use_cache=True)
        prefill = time.perf_counter() - start
        cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        start = time.perf_counter()
        for _ in range(new_tokens):
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            positions = mask.sum(dim=1, keepdim=True) - 1  # (B, 1): left padding does not count
            out = model(input_ids=token, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        decode = time.perf_counter() - start
    width = int(inputs["input_ids"].shape[1])
    return {"threads": torch.get_num_threads(), "prompt_tokens": width, "prefill_s": prefill,
            "prefill_tok_s": batch * width / prefill, "decode_s": decode, "decode_tok_s": batch * new_tokens / decode}


# The busy neighbour: another torch job on the same cores (its own default threads), as a second evaluation is.
NEIGHBOUR = "import torch\na = torch.randn(256, 256)\nwhile True:\n    a @ a"


def measure(model_dir: Path, case: str, busy: bool, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **CASES[case])
    neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], env={k: v for k, v in os.environ.items()
                                                                         if k != "OMP_WAIT_POLICY"}) if busy else None
    try:
        done = subprocess.run([sys.executable, "-m", "benchmarks.bench_threads", "--worker", "--model", str(model_dir),
                               "--batch", str(args.batch), "--new-tokens", str(args.new_tokens), "--shots", str(args.shots)],
                              env=env, capture_output=True, text=True, check=True)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    return {"case": case, "busy_neighbour": busy, **json.loads(done.stdout.strip().splitlines()[-1])}


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def table(rows: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (case, busy), group in rows.groupby(["case", "busy_neighbour"], sort=False):
        out.append({"threads setting": case, "neighbour": "one busy torch process" if busy else "none",
                    "runs": len(group), "prefill tokens/s": _spread(group["prefill_tok_s"].tolist()),
                    "decode tokens/s": _spread(group["decode_tok_s"].tolist()),
                    "decode_median": round(float(statistics.median(group["decode_tok_s"])), 1)})
    return pd.DataFrame(out)


def run(model_dir: Path, out: Path, args) -> pd.DataFrame:
    rows = []
    cases = [(case, busy) for busy in (False, True) for case in CASES]
    for r in range(args.rounds):
        for case, busy in cases if r % 2 == 0 else cases[::-1]:
            rows.append({"round": r, **measure(model_dir, case, busy, args)})
    rows = pd.DataFrame(rows)
    rows.to_csv(out / "threads.csv", index=False)
    summary = table(rows)
    from flipbench.report import markdown_table

    note = (f"model {model_dir.name}, batch {args.batch}, {int(rows['prompt_tokens'].iloc[0])}-token prompts "
            f"({args.shots} shots), {args.new_tokens} new tokens per row, {int(rows['threads'].iloc[0])} threads")
    (out / "threads.md").write_text(f"{note}\n\n{markdown_table(summary)}\n")
    return summary


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fragment", default="threads", help="docs/measured/<NAME>.md ('' for none)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.worker:
        print(json.dumps(worker(str(args.model), args.batch, args.new_tokens, args.shots)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    print(run(args.model, args.out, args).to_string(index=False))
    write(args, argv, load)
    return 0


def write(args, argv: list[str], load: float) -> None:
    """threads.md as a docs fragment (docs/measured/<--fragment>.md)."""
    if args.fragment:
        from benchmarks.provenance import command_line, write_fragment

        write_fragment(args.fragment, command_line("benchmarks.bench_threads", argv),
                       (args.out / "threads.md").read_text(), load_at_start=load)


if __name__ == "__main__":
    sys.exit(main())
