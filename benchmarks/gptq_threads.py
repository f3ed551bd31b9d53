"""Does GPTQ's output depend on the thread count? Compress a model with 1 and with 2 torch threads, for each
``compression.hessian_dtype``, each in its own process, and count the weights that differ.

    python -m benchmarks.gptq_threads [--bits 2] [--rounds 1]                        # the bundled model
    python -m benchmarks.gptq_threads --model results/real/smollm2-135m --calib-samples 16 --calib-len 128

Calibration is drawn from the default suite (the bundled synthetic tasks) with the model's own tokenizer; the same
draw for every process. Prints one line per dtype (tensors and values that differ between the thread counts, and the
compress seconds) and writes the table to ``docs/measured/<--fragment>.md`` (default ``gptq-threads`` for the
bundled model, ``gptq-threads-<model folder>`` otherwise; ``--fragment ''`` writes none).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.provenance import command_line, load_note, write_fragment

CHILD = """
import json, sys, time, torch
from flipbench.cli import CONF_DIR
from hydra import compose, initialize_config_dir
from flipbench import side, models
from flipbench.config import to_typed
import flipbench.cli  # noqa: F401  (schema)
overrides, out = json.loads(sys.argv[1]), sys.argv[2]
with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    cfg = to_typed(compose(config_name="config", overrides=overrides))
plan = side.preflight(cfg)
task_objs, tok, calib = side.prepare(cfg, plan)
model, tok = models.load_model(cfg.model, tokenizer=tok)
start = time.perf_counter()
model, _, _ = side.compress(model, tok, calib, cfg)
print(f"{time.perf_counter() - start:.2f}")
torch.save(model.state_dict(), out)
"""


def overrides(args, dtype: str) -> list[str]:
    model = [] if args.model is None else ["model=hf", f"model.path={args.model.resolve()}", "model.dtype=float32"]
    calib = [f"calibration.{k}={v}" for k, v in (("n_samples", args.calib_samples), ("seq_len", args.calib_len))
             if v is not None]
    return [*model, "compression=gptq", f"compression.bits={args.bits}", f"compression.hessian_dtype={dtype}", *calib]


def compare(tmp: Path, dtype: str) -> dict:
    import torch

    a, b = (torch.load(tmp / f"{dtype}-{t}.pt") for t in (1, 2))
    tensors = [k for k in a if not torch.equal(a[k], b[k])]
    return {"tensors": len(tensors), "of_tensors": len(a), "values": sum(int((a[k] != b[k]).sum()) for k in tensors),
            "of_values": sum(v.numel() for v in a.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--model", type=Path, default=None, help="a Hugging Face model folder (default: bundled)")
    parser.add_argument("--calib-samples", type=int, default=None, help="calibration.n_samples (default: the config's)")
    parser.add_argument("--calib-len", type=int, default=None, help="calibration.seq_len (default: the config's)")
    parser.add_argument("--fragment", default=None)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if args.model is not None and not (args.model / "config.json").is_file():
        parser.exit(2, f"gptq_threads: --model {args.model} holds no config.json; give a Hugging Face model folder\n")
    load, rows = os.getloadavg()[0], []
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float64"):
            seconds = {1: [], 2: []}
            for _ in range(args.rounds):
                for threads in (1, 2):
                    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
                    out = Path(tmp) / f"{dtype}-{threads}.pt"
                    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(overrides(args, dtype)), str(out)],
                                          env=env, capture_output=True, text=True, check=True)
                    seconds[threads].append(float(done.stdout.strip().splitlines()[-1]))
            found = compare(Path(tmp), dtype)
            for threads in (1, 2):
                (Path(tmp) / f"{dtype}-{threads}.pt").unlink()
            rows.append((dtype, found, min(seconds[1]), min(seconds[2])))
            print(f"hessian_dtype={dtype}: {found['tensors']} of {found['of_tensors']} tensors and {found['values']:,} "
                  f"of {found['of_values']:,} values differ between 1 and 2 threads; compress {min(seconds[1]):.2f} s "
                  f"(1 thread), {min(seconds[2]):.2f} s (2 threads), best of {args.rounds}")
    name = args.fragment if args.fragment is not None else (
        "gptq-threads" if args.model is None else f"gptq-threads-{args.model.resolve().name}")
    if name:
        print(write_fragment(name, command_line("benchmarks.gptq_threads", argv), body(rows, args, load_note(load))))
    return 0


def body(rows, args, note: str) -> str:
    lines = ["| `compression.hessian_dtype` | values differing, 1 vs 2 threads | compress time, 1 thread / 2 threads |",
             "|---|---|---|"]
    for dtype, f, one, two in rows:
        differ = (f"{f['values']:,} of {f['of_values']:,} ({f['tensors']} of {f['of_tensors']} tensors)"
                  if f["values"] else f"0 of {f['of_values']:,}")
        lines.append(f"| {dtype} | {differ} | {one:.2f} s / {two:.2f} s |")
    model = "the bundled model" if args.model is None else f"`{args.model.resolve().name}`"
    lines += ["", f"GPTQ {args.bits}-bit on {model}, each compression in its own process (`OMP_NUM_THREADS`), "
              f"best of {args.rounds}; values counted over the whole state dict. {note}"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
