"""Per-split local data: lm-eval's split roles (MMLU few-shot from dev, GSM8k from train) hold offline.

The reference prompt is lm-eval's own: its stock task config, with the hub download replaced by the same
folder (``datasets.load_dataset`` answers what the hub would). The shots are also checked by hand: the
subject's first five dev rows, never a test question.
"""

from __future__ import annotations

import pandas as pd
import pytest

from flipbench import evaluate, pipeline, tasks
from flipbench.config import ConfigError, SuiteConfig
from tests.conftest import compose
from tests.test_standard_tasks import GSM8K, MMLU, MMLU_DESCRIPTION, mmlu_question, shared_index, write  # noqa: F401

SUBJECTS = ("anatomy", "astronomy")


def split_rows(subject: str, split: str) -> list[dict]:
    """Disjoint dev and test questions per subject: dev holds five, test the rest plus a marked copy of each."""
    rows = [row for row in MMLU if row["subject"] == subject]
    if split == "dev":
        return rows[:5]
    return [dict(row, question=f"TEST {row['question'].strip()}") for row in rows] + rows[5:]


def save_hub_layout(folder, kind: str):
    """cais/mmlu as a user copies it: <folder>/<subject>/<split> (save_to_disk) or <split>.jsonl, or a DatasetDict."""
    import datasets

    for subject in SUBJECTS:
        splits = {split: split_rows(subject, split) for split in ("dev", "test")}
        if kind == "dataset_dict":
            datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in splits.items()}).save_to_disk(
                folder / subject)
        for split, rows in splits.items():
            if kind == "saved":
                datasets.Dataset.from_list(rows).save_to_disk(folder / subject / split)
            elif kind == "jsonl":
                (folder / subject).mkdir(parents=True, exist_ok=True)
                write(rows, folder / subject / f"{split}.jsonl")
    return folder


def prompts_of(task_objs: dict, shots: int) -> dict[str, dict[int, str]]:
    out = {}
    for leaf, task_obj in task_objs.items():
        task_obj.set_config(key="num_fewshot", value=shots)
        task_obj.set_fewshot_seed(1234)
        task_obj.build_all_requests(rank=0, world_size=1)
        out[leaf] = {inst.doc_id: inst.args[0] for inst in task_obj.instances}
    return out


def flipbench_prompts(spec, shots: int = 5) -> dict[str, dict[int, str]]:
    plan = tasks.resolve(SuiteConfig(name="standard", tasks=["mmlu"], data_files={"mmlu": spec},
                                     num_fewshot={"mmlu": shots}))
    return prompts_of(evaluate.load_tasks(plan), shots)


def lm_eval_prompts(folder, manager, monkeypatch) -> dict[str, dict[int, str]]:
    """lm-eval's stock mmlu_<subject> tasks, their hub download answered from the folder."""
    import datasets
    import lm_eval.api.task as task_module

    def from_folder(path, name=None, **_):
        assert path == "cais/mmlu"
        return datasets.DatasetDict({s: datasets.load_from_disk(str(folder / name / s)) for s in ("dev", "test")})

    monkeypatch.setattr(task_module.datasets, "load_dataset", from_folder)
    return prompts_of(manager.load([f"mmlu_{s}" for s in SUBJECTS])["tasks"], 5)


def test_hub_layout_folder_reproduces_lm_eval_prompts(shared_index, tmp_path, monkeypatch):
    folder = save_hub_layout(tmp_path / "mmlu", "saved")
    ours = flipbench_prompts(str(folder))
    assert ours == lm_eval_prompts(folder, shared_index, monkeypatch)
    for subject in SUBJECTS:
        shots = "".join(f"{mmlu_question(r)} {'ABCD'[r['answer']]}\n\n" for r in split_rows(subject, "dev"))
        test = split_rows(subject, "test")
        assert ours[f"mmlu_{subject}"] == {i: MMLU_DESCRIPTION.format(subject) + shots + mmlu_question(row)
                                           for i, row in enumerate(test)}


@pytest.mark.parametrize("kind", ["jsonl", "dataset_dict", "mapping"])
def test_every_per_split_form_gives_the_same_prompts(shared_index, tmp_path, kind):
    reference = flipbench_prompts(str(save_hub_layout(tmp_path / "saved", "saved")))
    if kind == "mapping":  # one all-subject file per split
        spec = {split: str(write([r for s in SUBJECTS for r in split_rows(s, split)], tmp_path / f"{split}.parquet"))
                for split in ("test", "dev")}
    else:
        spec = str(save_hub_layout(tmp_path / kind, kind))
    assert flipbench_prompts(spec) == reference


def test_one_file_form_still_works_and_names_its_deviation(shared_index, tmp_path):
    path = write(MMLU, tmp_path / "mmlu.jsonl")
    plan = tasks.resolve(SuiteConfig(name="standard", tasks=["mmlu"], data_files={"mmlu": str(path)},
                                     num_fewshot={"mmlu": 5}))
    assert len(plan.notes) == 1 and "one file serves every split (test, dev)" in plan.notes[0]
    split_plan = tasks.resolve(SuiteConfig(name="standard", tasks=["mmlu"], num_fewshot={"mmlu": 5},
                                           data_files={"mmlu": str(save_hub_layout(tmp_path / "m", "saved"))}))
    assert split_plan.notes == []


def test_gsm8k_shots_come_from_train_and_calibration_can_use_it(shared_index, tmp_path):
    train, test = GSM8K[:5], [dict(row, question=f"TEST {row['question']}") for row in GSM8K]
    spec = {"train": str(write(train, tmp_path / "train.jsonl")), "test": str(write(test, tmp_path / "test.jsonl"))}
    plan = tasks.resolve(SuiteConfig(name="standard", tasks=["gsm8k"], data_files={"gsm8k": spec}))
    task_objs = evaluate.load_tasks(plan)
    prompts = prompts_of(task_objs, 5)["gsm8k"]
    solved = {f"Question: {row['question']}\nAnswer: {row['answer']}" for row in train}
    for doc_id, prompt in prompts.items():
        *shots, asked = prompt.split("\n\n")
        assert set(shots) == solved and asked == f"Question: {test[doc_id]['question']}\nAnswer:"
    from flipbench.compress.calibration import task_calibration_texts

    texts = task_calibration_texts(task_objs, n_samples=3, seed=0, eval_doc_hashes=None)
    assert len(texts) == 3 and not any("TEST" in text for text in texts)


def bad(tmp_path, name: str):
    """A data_files spec that must be refused, and the words of its one-line error."""
    mmlu_test = str(write(split_rows("anatomy", "test"), tmp_path / "test.jsonl"))
    if name == "missing split file":
        return {"test": mmlu_test, "dev": str(tmp_path / "absent.jsonl")}, r"suite.data_files.mmlu.dev=.*does not exist"
    if name == "unknown split":
        return {"test": mmlu_test, "train": mmlu_test}, "names split 'train', which mmlu does not use; give its splits test, dev"
    if name == "folder without dev":
        (tmp_path / "only_test").mkdir()
        write(split_rows("anatomy", "test"), tmp_path / "only_test" / "test.jsonl")
        return str(tmp_path / "only_test"), r"has no 'dev' split \(the few-shot examples \(5-shot\) of mmlu\)"
    short_dev = str(write(split_rows("anatomy", "dev")[:3], tmp_path / "dev.jsonl"))
    return {"test": mmlu_test, "dev": short_dev}, "split 'dev' has 3 rows for anatomy, fewer than the 5 shots"


@pytest.mark.parametrize("name", ["missing split file", "unknown split", "folder without dev", "short dev"])
def test_bad_split_data_is_one_line_before_any_model_loads(shared_index, tmp_path, name):
    spec, message = bad(tmp_path, name)
    with pytest.raises(ConfigError, match=message) as err:
        tasks.resolve(SuiteConfig(name="standard", tasks=["mmlu"], data_files={"mmlu": spec}, num_fewshot={"mmlu": 5}))
    assert "\n" not in str(err.value)


def test_run_keeps_mmlu_shots_on_dev_questions(shared_index, random_llama, tmp_path):
    """From samples.parquet: every prompt's shots are the subject's dev questions, never a test question."""
    folder = save_hub_layout(tmp_path / "mmlu", "jsonl")
    run_dir = pipeline.run(compose([
        "model=hf", f"model.path={random_llama}", "suite=standard", "suite.tasks=[mmlu]", f"suite.data_files.mmlu={folder}",
        "compression=none", "eval.batch_size=8", "eval.bootstrap=0", "output.plots=false", "suite.limit=2",
        f"output.root={tmp_path / 'results'}"]))
    samples = pd.read_parquet(run_dir / "samples.parquet")
    assert sorted(samples["group"]) == ["anatomy", "anatomy", "astronomy", "astronomy"]
    for _, row in samples.iterrows():
        dev, test = split_rows(row["group"], "dev"), split_rows(row["group"], "test")
        shots = "".join(f"{mmlu_question(r)} {'ABCD'[r['answer']]}\n\n" for r in dev)
        assert row["prompt"] == MMLU_DESCRIPTION.format(row["group"]) + shots + mmlu_question(test[row["doc_id"]])
        assert row["prompt"].count("TEST ") == 1  # the asked question only: no test question among the shots
