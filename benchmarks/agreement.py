"""flipbench against a plain ``lm_eval.simple_evaluate``, per task shape, side by side (docs/benchmarks.md's table).

    python -m benchmarks.agreement

Writes the shape tasks of ``tests/shape_tasks.py`` (several gold answers, multiple input, acc_mutual_info,
acc_bytes, an MMLU-like group of categories) to a temporary folder, runs flipbench on the bundled tiny model
against its 2-bit RTN copy, runs plain lm-eval on both models, and prints one markdown row per (task, metric)
and per category: both accuracies, both flip rates, how many (doc, side) pairs agree, and n_pred_mismatch; the
table also goes to docs/measured/agreement.md (``--fragment``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from flipbench import metrics, pipeline
from flipbench.report import markdown_table
from tests.conftest import compose
from tests.shape_tasks import MMLU_CATEGORIES, SHAPE_METRICS, flipbench_overrides, per_doc, plain_lm_eval, write_shape_tasks


def compare(samples: pd.DataFrame, summary: pd.DataFrame, base: dict, comp: dict) -> pd.DataFrame:
    rows = []
    for task, task_metrics in SHAPE_METRICS.items():
        docs = samples[samples["task"] == task]
        for metric in task_metrics:
            row = summary[(summary["task"] == task) & (summary["group"] == "all") & (summary["metric"] == metric)].iloc[0]
            lm_b, lm_c = (np.array([per_doc(r, d, metric) for _, d in docs.iterrows()]) for r in (base, comp))
            agree = sum(int((metrics.predictions(docs, side, metric)[1] == lm).sum())
                        for side, lm in (("base", lm_b), ("comp", lm_c)))
            rows.append({"task": task, "metric": metric, "n": int(row["n"]),
                         "lm-eval acc": f"{lm_b.mean():.3f} → {lm_c.mean():.3f}",
                         "flipbench acc": f"{row['acc_base']:.3f} → {row['acc_comp']:.3f}",
                         "flips lm-eval / flipbench": f"{np.mean(lm_b != lm_c):.3f} / {row['flips']:.3f}",
                         "(doc, side) agreeing": f"{agree}/{2 * len(docs)}",
                         "n_pred_mismatch": int(row["n_pred_mismatch"])})
    for group, (alias, _) in MMLU_CATEGORIES.items():
        row = summary[(summary["task"] == "shape_mmlu") & (summary["group"] == (alias or group))].iloc[0]
        rows.append({"task": f"shape_mmlu category {alias or group}", "metric": "acc", "n": int(row["n"]),
                     "lm-eval acc": f"{base['results'][group]['acc,none']:.3f} → {comp['results'][group]['acc,none']:.3f}",
                     "flipbench acc": f"{row['acc_base']:.3f} → {row['acc_comp']:.3f}",
                     "flips lm-eval / flipbench": f"— / {row['flips']:.3f}", "(doc, side) agreeing": "—",
                     "n_pred_mismatch": int(row["n_pred_mismatch"])})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    from benchmarks.provenance import add_fragment_option, command_line, write_fragment

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fragment_option(parser, "agreement")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_shape_tasks(Path(tmp) / "tasks")
        run_dir = pipeline.run(compose(flipbench_overrides(folder, Path(tmp) / "results")))
        table = compare(pd.read_parquet(run_dir / "samples.parquet"), pd.read_csv(run_dir / "summary.csv"),
                        plain_lm_eval(folder, quantize=False), plain_lm_eval(folder, quantize=True))
    print(markdown_table(table))
    if args.fragment:
        write_fragment(args.fragment, command_line("benchmarks.agreement", argv), markdown_table(table))


if __name__ == "__main__":
    main()
