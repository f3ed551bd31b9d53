"""The real tier's Winogrande, flipbench against a plain ``lm_eval.simple_evaluate``, per doc and side.

    python -m benchmarks.real_agreement --run <flipbench run dir> --model <converted model> \
        --winogrande <hf_datasets>/winogrande [--limit 20]

The flipbench run is one RTN evaluation of the real model on Winogrande (``suite.task_limits.winogrande``
docs, the first N); this script reruns lm-eval on its own over the same docs: lm-eval's registered
``winogrande`` task with only its dataset pointed at the wheel's ``save_to_disk`` copy (the ``arrow`` loader over
its files, nothing from flipbench's data path), HFLM over the baseline and over the same RTN copy (flipbench's
quantizer, the run's bits and group size). It prints both accuracies, both flip rates, and the docs whose
correctness differs (none when flipbench scores Winogrande as lm-eval does).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml


def plain_winogrande(model_dir: Path, data: Path, limit: int, quant: dict | None, batch_size: int) -> dict[int, float]:
    """lm-eval's per-doc ``acc`` on the first ``limit`` Winogrande validation docs: {doc_id: 0.0 or 1.0}."""
    import lm_eval
    import lm_eval.tasks
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    if quant is not None:
        from flipbench.compress import QuantConfig, compress

        compress(model, QuantConfig(**quant))
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), batch_size=batch_size,
              device="cpu")
    files = sorted(str(p) for p in data.glob("*/validation/*.arrow"))
    # lm-eval's own winogrande YAML (doc_to_text/target/choice, metric), only the dataset's location changed.
    task = load_yaml(Path(lm_eval.tasks.__file__).parent / "winogrande" / "default.yaml", resolve_func=True)
    task.update(dataset_path="arrow", dataset_name=None, training_split=None,
                dataset_kwargs={"data_files": {"validation": files}})
    out = lm_eval.simple_evaluate(lm, tasks=[task], task_manager=TaskManager(), limit=limit, log_samples=True,
                                  bootstrap_iters=0)
    return {int(s["doc_id"]): float(s["acc"]) for s in out["samples"]["winogrande"]}


def compare(run: Path, model: Path, winogrande: Path, limit: int) -> dict:
    """Accuracies, flips and per-(doc, side) agreement of a flipbench run's Winogrande rows with plain lm-eval."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    comp = cfg["compression"]
    quant = {"method": comp["method"], "bits": comp["bits"], "group_size": comp["group_size"], "sym": comp["sym"]}
    batch = int(cfg["eval"]["batch_size"])
    rows = pd.read_parquet(run / "samples.parquet").query("task == 'winogrande'").set_index("doc_id")
    plain = {side: plain_winogrande(model, winogrande, limit, q, batch)
             for side, q in (("base", None), ("comp", quant))}
    ids = sorted(plain["base"])
    if ids != sorted(rows.index):
        raise ValueError(f"docs differ: lm-eval {ids}, flipbench {sorted(rows.index)}")
    lm_b, lm_c = (np.array([plain[s][i] for i in ids]) for s in ("base", "comp"))
    fb_b, fb_c = (rows.loc[ids, f"correct_{s}"].to_numpy(float) for s in ("base", "comp"))
    return {"docs": len(ids), "lm_eval_acc": [float(lm_b.mean()), float(lm_c.mean())],
            "flipbench_acc": [float(fb_b.mean()), float(fb_c.mean())],
            "flips": {"lm_eval": float(np.mean(lm_b != lm_c)), "flipbench": float(np.mean(fb_b != fb_c))},
            "agreeing_doc_sides": int((lm_b == fb_b).sum() + (lm_c == fb_c).sum()),
            "differing_docs": [i for i, a, b, c, d in zip(ids, lm_b, fb_b, lm_c, fb_c) if a != b or c != d]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--winogrande", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=20)
    args = parser.parse_args(argv)
    print(json.dumps(compare(args.run, args.model, args.winogrande, args.limit), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
