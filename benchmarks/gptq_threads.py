"""Does GPTQ's output depend on the thread count? Compress the bundled model with 1 and with 2 torch threads, for each
``compression.hessian_dtype``, each in its own process, and count the weights that differ.

    python -m benchmarks.gptq_threads [--bits 2] [--rounds 1]

Prints one line per dtype: tensors and weights that differ between the thread counts, and the compress seconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import sys, time, torch
from flipbench.cli import CONF_DIR
from hydra import compose, initialize_config_dir
from flipbench import side, models
from flipbench.config import to_typed
import flipbench.cli  # noqa: F401  (schema)
bits, dtype, out = sys.argv[1], sys.argv[2], sys.argv[3]
with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    cfg = to_typed(compose(config_name="config", overrides=["compression=gptq", f"compression.bits={bits}",
                                                              f"compression.hessian_dtype={dtype}"]))
plan = side.preflight(cfg)
task_objs, tok, calib = side.prepare(cfg, plan)
model, tok = models.load_model(cfg.model, tokenizer=tok)
start = time.perf_counter()
model, _, _ = side.compress(model, tok, calib, cfg)
print(f"{time.perf_counter() - start:.2f}")
torch.save(model.state_dict(), out)
"""


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "float64"):
            seconds = {1: [], 2: []}
            for _ in range(args.rounds):
                for threads in (1, 2):
                    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
                    out = Path(tmp) / f"{dtype}-{threads}.pt"
                    done = subprocess.run([sys.executable, "-c", CHILD, str(args.bits), dtype, str(out)], env=env,
                                          capture_output=True, text=True, check=True)
                    seconds[threads].append(float(done.stdout.strip().splitlines()[-1]))
            a, b = (torch.load(Path(tmp) / f"{dtype}-{t}.pt") for t in (1, 2))
            tensors = [k for k in a if not torch.equal(a[k], b[k])]
            weights = sum(int((a[k] != b[k]).sum()) for k in tensors)
            total = sum(v.numel() for v in a.values())
            print(f"hessian_dtype={dtype}: {len(tensors)} of {len(a)} tensors and {weights:,} of {total:,} values differ "
                  f"between 1 and 2 threads; compress {min(seconds[1]):.2f} s (1 thread), {min(seconds[2]):.2f} s "
                  f"(2 threads), best of {args.rounds}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
