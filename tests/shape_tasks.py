"""Small local lm-eval tasks of every multiple-choice shape lm-eval scores differently, built from the bundled
synth data (so the bundled tiny model, trained on synth, gets some right and some wrong):

- ``shape_multigold``: doc_to_target lists several gold indices (lm-eval counts a pred equal to any); the
  first listed is often a wrong one, one doc lists an index past the choices;
- ``shape_multi_input``: Winogrande-style, doc_to_text an index, doc_to_choice the contexts, one shared
  continuation;
- ``shape_mutual_info``: acc_mutual_info (lm-eval adds one unconditional request per choice);
- ``shape_bytes``: acc_bytes on choices with accented letters (UTF-8 bytes != characters, differently per choice);
- ``shape_mmlu``: an MMLU-like group of category groups (one with a group_alias) over per-subject tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

SYNTH_DATA = Path(__file__).resolve().parent.parent / "tasks" / "synth" / "data"
N_DOCS = 12
BATCH = 8  # the same batch size on every side, so log-likelihoods agree bit for bit
BITS = 2  # the compressed side: RTN at this many bits

SHAPE_TASKS = ["shape_multigold", "shape_multi_input", "shape_mutual_info", "shape_bytes", "shape_mmlu"]
# flipbench's reported metrics per task; the first is the headline
SHAPE_METRICS = {
    "shape_multigold": ["acc_norm", "acc"],
    "shape_multi_input": ["acc", "acc_norm"],
    "shape_mutual_info": ["acc_mutual_info", "acc"],
    "shape_bytes": ["acc_bytes", "acc_norm", "acc"],
    "shape_mmlu": ["acc"],
}
# shape_mmlu: category group -> (alias or None, subjects)
MMLU_CATEGORIES = {"shape_mmlu_lore": ("lore and legend", ["history", "zoology"]), "shape_mmlu_sky": (None, ["astronomy"])}

_MC = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
doc_to_text: {text}
doc_to_choice: {choice}
doc_to_target: {target}
metric_list:
{metrics}
"""


def _rows(name: str) -> list[dict]:
    lines = (SYNTH_DATA / f"{name}_test.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _task(folder: Path, name: str, rows: list[dict], text: str, choice: str, target: str, metrics: list[str],
          extra: str = "") -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    body = "".join(f"  - metric: {m}\n" for m in metrics)
    (folder / f"{name}.yaml").write_text(
        _MC.format(name=name, data=json.dumps(str(data.resolve())), text=text, choice=choice, target=target, metrics=body) + extra)


def _multigold(hellaswag: list[dict]) -> list[dict]:
    rows = []
    for i, doc in enumerate(hellaswag[:N_DOCS]):
        label = int(doc["label"])
        golds = [label] if i % 3 == 0 else [(label + 1) % 4, label]
        if i == 4:
            golds = [9, label]  # an index past the choices: lm-eval ignores it
        rows.append({"query": doc["query"], "choices": doc["choices"], "golds": golds})
    return rows


def _multi_input(hellaswag: list[dict]) -> list[dict]:
    rows = []
    for i, doc in enumerate(hellaswag[:N_DOCS]):
        label = int(doc["label"])
        options = [doc["choices"][label], doc["choices"][(label + 1) % 4]]
        answer = i % 2  # the right context first on even docs, second on odd ones
        if answer:
            options.reverse()
        rows.append({"contexts": [f"{doc['query']} {o}" for o in options], "answer": answer,
                     "continuation": "Then the work is done."})
    return rows


def _accented(hellaswag: list[dict]) -> list[dict]:
    """Every "e" as "é" (2 UTF-8 bytes): choices differ in bytes per character, so ll / bytes and ll / characters
    pick different choices on some docs (doc 4 with the bundled model)."""
    return [{"query": d["query"], "label": int(d["label"]), "choices": [c.replace("e", "é") for c in d["choices"]]}
            for d in hellaswag[:N_DOCS]]


def _mmlu_like(folder: Path) -> None:
    rows = _rows("synth_mmlu")
    (folder / "shape_mmlu.yaml").write_text(
        "group: shape_mmlu\ntask:\n" + "".join(f"  - {c}\n" for c in MMLU_CATEGORIES)
        + "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n")
    for category, (alias, subjects) in MMLU_CATEGORIES.items():
        alias_line = f"group_alias: {alias}\n" if alias else ""
        (folder / f"{category}.yaml").write_text(
            f"group: {category}\n{alias_line}task:\n  - {category}_tasks\n"
            "aggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n")
        for subject in subjects:
            docs = [r for r in rows if r["subject"] == subject][:N_DOCS // 2]
            _task(folder, f"shape_mmlu_{subject}", docs, '"{{question}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\n'
                  'C. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"', '["A", "B", "C", "D"]', "answer", ["acc"],
                  extra=f"tag: {category}_tasks\n")


def write_shape_tasks(folder: Path) -> Path:
    """Every task of :data:`SHAPE_TASKS` as lm-eval YAML with its JSONL data, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    hellaswag, arc = _rows("synth_hellaswag"), _rows("synth_arc")
    _task(folder, "shape_multigold", _multigold(hellaswag), '"{{query}}"', "choices", "golds", ["acc", "acc_norm"])
    _task(folder, "shape_multi_input", _multi_input(hellaswag), "answer", "contexts", "continuation",
          ["acc", "acc_norm"])
    arc_rows = [{"question": r["question"], "choices": r["choices"]["text"],
                 "answer": r["choices"]["label"].index(r["answerKey"])} for r in arc[:N_DOCS]]
    _task(folder, "shape_mutual_info", arc_rows, '"Question: {{question}}\\nAnswer:"', "choices", "answer",
          ["acc", "acc_mutual_info"])
    _task(folder, "shape_bytes", _accented(hellaswag), '"{{query}}"', "choices", "label",
          ["acc", "acc_norm", "acc_bytes"])
    _mmlu_like(folder)
    return folder


def flipbench_overrides(folder: Path, out: Path) -> list[str]:
    """A flipbench run of the bundled tiny model against its RTN copy on every shape task."""
    overrides = ["model=tiny", "compression=rtn", f"compression.bits={BITS}", f"suite.include_path={folder}",
                 f"suite.tasks=[{','.join(SHAPE_TASKS)}]", "suite.subject_groups=[shape_mmlu]", "suite.metrics={}",
                 f"eval.batch_size={BATCH}", "eval.bootstrap=20", "output.plots=false", f"output.root={out}"]
    return overrides + [f"+suite.metrics.{task}=[{','.join(m)}]" for task, m in SHAPE_METRICS.items()]


def plain_lm_eval(folder: Path, quantize: bool) -> dict:
    """lm-eval on its own: its TaskManager over the task folder, HFLM over the model, nothing from flipbench's
    evaluation stage. The quantized copy is made with flipbench's RTN (what the flipbench run compares)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flipbench.models import resolve_path

    path = resolve_path("bundled:tiny")
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    if quantize:
        from flipbench.compress import QuantConfig, compress

        compress(model, QuantConfig(method="rtn", bits=BITS, group_size=-1))
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(path), batch_size=BATCH, device="cpu")
    manager = TaskManager(include_path=[str(folder)], include_defaults=False)
    return lm_eval.simple_evaluate(lm, tasks=SHAPE_TASKS, task_manager=manager, log_samples=True, bootstrap_iters=0)


def per_doc(results: dict, row, metric: str) -> float:
    """lm-eval's logged value of ``metric`` for the doc of one flipbench samples row."""
    leaf = f"shape_mmlu_{row['group']}" if row["task"] == "shape_mmlu" else row["task"]
    return next(float(s[metric]) for s in results["samples"][leaf] if s["doc_id"] == row["doc_id"])
