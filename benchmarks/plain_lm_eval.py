"""Plain lm-eval on the tasks a flipbench suite names: the other side of the real-model overhead bench.

    python -m benchmarks.plain_lm_eval --model <dir> --batch-size 4 -- <flipbench suite overrides>

flipbench only translates the suite (task names, local data files, few-shot counts, docs per task) into
lm-eval task configs (``flipbench.tasks.resolve``, no model, no evaluation); lm-eval then loads the model
itself (``hf`` from the path, as ``lm-eval run --model hf`` does) and evaluates one model through
``simple_evaluate`` with its own defaults, as its CLI would.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path


def lm_eval_inputs(overrides: list[str]):
    """(task configs, task manager, samples per leaf or None, limit, seed) for the suite the overrides compose."""
    from hydra import compose, initialize_config_dir

    from flipbench.cli import CONF_DIR
    from flipbench.config import to_typed
    from flipbench.tasks import resolve

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = to_typed(compose("config", overrides=overrides))
    suite = cfg.suite
    plan = resolve(suite)
    specs = []
    for spec in plan.specs:
        if not isinstance(spec, dict):
            raise SystemExit(f"plain_lm_eval: task {spec!r} has no local data files; give it suite.data_files")
        spec = copy.deepcopy(spec)
        shots = suite.num_fewshot.get(plan.reported.get(spec["task"], spec["task"]))
        if shots is not None:
            spec["num_fewshot"] = shots
        specs.append(spec)
    samples = None
    if suite.task_limits:
        samples = {leaf: list(range(suite.task_limits.get(task, suite.limit))) for leaf, task in plan.reported.items()}
    return specs, plan.manager, samples, None if samples else suite.limit, cfg.eval.seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    import lm_eval

    specs, manager, samples, limit, seed = lm_eval_inputs(args.overrides)
    out = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={args.model},dtype=float32", tasks=specs,
                                  task_manager=manager, samples=samples, limit=limit, batch_size=args.batch_size,
                                  device="cpu", random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                                  fewshot_random_seed=seed)
    print({task: {k: v for k, v in row.items() if k.startswith("acc")} for task, row in out["results"].items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
