"""lm-eval's real MMLU, HellaSwag, ARC and GSM8k configs run offline over local files in each hub dataset's schema.

Rows are written here in the hub schemas (cais/mmlu, Rowan/hellaswag, allenai/ai2_arc, openai/gsm8k) and in
several file formats; the expected prompts are spelled out by hand from lm-eval's task YAMLs, not computed
with lm-eval. One pipeline run covers all five standard tasks; the other checks need no model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flipbench import evaluate, pipeline, tasks
from flipbench.config import ConfigError, SuiteConfig
from tests.conftest import compose

# cais/mmlu: question, subject, choices, answer (an index). Six rows per subject, so 5-shot has a pool; the
# second question's surrounding spaces check the template's question.strip().
MMLU = [
    {"question": "Which bone forms the prominence of the cheek?", "subject": "anatomy",
     "choices": ["Maxilla", "Zygomatic", "Sphenoid", "Ethmoid"], "answer": 1},
    {"question": "  The pituitary gland sits in which structure?  ", "subject": "anatomy",
     "choices": ["Sella turcica", "Foramen magnum", "Cribriform plate", "Mastoid process"], "answer": 0},
    {"question": "How many pairs of cranial nerves are there?", "subject": "anatomy",
     "choices": ["10", "11", "12", "13"], "answer": 2},
    {"question": "Which chamber of the heart pumps blood into the aorta?", "subject": "anatomy",
     "choices": ["Right atrium", "Right ventricle", "Left atrium", "Left ventricle"], "answer": 3},
    {"question": "The femur articulates proximally with the", "subject": "anatomy",
     "choices": ["acetabulum", "patella", "tibia", "fibula"], "answer": 0},
    {"question": "Which muscle is the main muscle of inspiration?", "subject": "anatomy",
     "choices": ["Diaphragm", "Trapezius", "Deltoid", "Masseter"], "answer": 0},
    {"question": "Which planet has the shortest year?", "subject": "astronomy",
     "choices": ["Venus", "Mercury", "Mars", "Earth"], "answer": 1},
    {"question": "What is the main fusion product in the Sun's core?", "subject": "astronomy",
     "choices": ["Carbon", "Oxygen", "Helium", "Iron"], "answer": 2},
    {"question": "A light-year measures", "subject": "astronomy",
     "choices": ["time", "distance", "brightness", "mass"], "answer": 1},
    {"question": "Which moon has a thick nitrogen atmosphere?", "subject": "astronomy",
     "choices": ["Europa", "Io", "Titan", "Phobos"], "answer": 2},
    {"question": "The Chandrasekhar limit is about how many solar masses?", "subject": "astronomy",
     "choices": ["0.4", "1.4", "3.0", "10"], "answer": 1},
    {"question": "Which planet rotates on its side?", "subject": "astronomy",
     "choices": ["Uranus", "Neptune", "Saturn", "Jupiter"], "answer": 0},
]

# Rowan/hellaswag: every hub field; label is a string there. The second row is WikiHow-style, with the
# bracketed artefacts lm-eval's preprocess removes.
HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "endings": [
         "is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
         "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
     "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": "3"},
    {"ind": 92, "activity_label": "Home and Garden", "ctx_a": "[header] How to repot a fern [title] Water the fern "
     "a day before.", "ctx_b": "", "ctx": "[header] How to repot a fern [title] Water the fern a day before.",
     "endings": ["[step] Moist roots slide out of the pot more easily.", "Then paint the pot red.",
                 "The fern is sold at a market.", "[title] Throw the fern away."],
     "source_id": "wikihow~17", "split": "val", "split_type": "zeroshot", "label": "0"},
    {"ind": 7, "activity_label": "Baking cookies", "ctx_a": "A woman puts dough on a tray.", "ctx_b": "she",
     "ctx": "A woman puts dough on a tray. she", "endings": [
         "slides the tray into the oven.", "throws the tray into a lake.", "eats the oven.", "paints the dough."],
     "source_id": "activitynet~v_abc", "split": "val", "split_type": "indomain", "label": "0"},
    {"ind": 8, "activity_label": "Washing a car", "ctx_a": "A man sprays a car with water.", "ctx_b": "then he",
     "ctx": "A man sprays a car with water. then he", "endings": [
         "scrubs it with a sponge.", "drives into the sea.", "folds the car.", "reads the hose."],
     "source_id": "activitynet~v_def", "split": "val", "split_type": "indomain", "label": "0"},
]
# lm-eval's hellaswag process_docs: "<activity_label>: <ctx_a> <Ctx_b>", stripped, " [title]" -> ". ",
# other brackets removed, double spaces collapsed.
HELLASWAG_QUERIES = [
    "Roof shingle removal: A man is sitting on a roof. He",
    "Home and Garden: How to repot a fern. Water the fern a day before.",
    "Baking cookies: A woman puts dough on a tray. She",
    "Washing a car: A man sprays a car with water. Then he",
]


def arc(row_id: str, question: str, texts: list[str], labels: list[str], key: str) -> dict:
    return {"id": row_id, "question": question, "choices": {"text": texts, "label": labels}, "answerKey": key}


# allenai/ai2_arc: some hub rows label their choices 1-4 instead of A-D, and a few have 3 or 5 choices.
ARC_EASY = [
    arc("Mercury_7175875", "Which gas do plants take in for photosynthesis?",
        ["oxygen", "carbon dioxide", "nitrogen", "helium"], ["A", "B", "C", "D"], "B"),
    arc("NYSEDREGENTS_2015_4_8", "Which tool measures air temperature?",
        ["ruler", "balance", "thermometer", "barometer"], ["1", "2", "3", "4"], "3"),
    arc("Mercury_SC_401", "What is the state of water at 110 degrees Celsius at sea level?",
        ["solid", "liquid", "gas"], ["A", "B", "C"], "C"),
    arc("Mercury_SC_402", "Which is a renewable resource?", ["coal", "wind", "oil", "natural gas"],
        ["A", "B", "C", "D"], "B"),
]
ARC_CHALLENGE = [
    arc("Mercury_SC_415702", "George wants to warm his hands quickly by rubbing them. Which skin surface will produce "
        "the most heat?", ["dry palms", "wet palms", "palms covered with oil", "palms covered with lotion"],
        ["A", "B", "C", "D"], "A"),
    arc("MCAS_2009_5_6516", "Which of the following statements best explains why magnets usually stick to a "
        "refrigerator door?", ["The refrigerator door is smooth.", "The refrigerator door contains iron.",
                               "The refrigerator door is a good conductor.", "The refrigerator door has electric wires "
                               "in it.", "The door is cold."], ["A", "B", "C", "D", "E"], "B"),
    arc("Mercury_7233695", "Which force keeps the Moon in orbit around Earth?", ["friction", "magnetism", "gravity",
        "tension"], ["A", "B", "C", "D"], "C"),
]

# openai/gsm8k: the answer holds the worked solution and ends with "#### N".
GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "Tom has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A box holds 6 eggs. How many eggs are in 5 boxes?",
     "answer": "5 boxes hold 5 * 6 = <<5*6=30>>30 eggs.\n#### 30"},
    {"question": "Sara had $1,200, and spent $250. How much is left?",
     "answer": "She has 1200 - 250 = <<1200-250=950>>950 dollars left.\n#### 950"},
    {"question": "There are 12 birds and 5 fly away. How many remain?",
     "answer": "12 - 5 = <<12-5=7>>7 birds remain.\n#### 7"},
    {"question": "A pen costs 2 dollars. How much do 9 pens cost?",
     "answer": "9 * 2 = <<9*2=18>>18 dollars.\n#### 18"},
    {"question": "Ann reads 10 pages a day. How many pages does she read in a week?",
     "answer": "7 * 10 = <<7*10=70>>70 pages.\n#### 70"},
]

LIMIT = 3
MMLU_DESCRIPTION = "The following are multiple choice questions (with answers) about {}.\n\n"


def write(rows: list[dict], path: Path) -> Path:
    """Rows in one of the formats flipbench reads (csv only for flat schemas)."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    return path


def mmlu_question(row: dict) -> str:
    letters = "ABCD"
    options = "".join(f"\n{letters[i]}. {choice}" for i, choice in enumerate(row["choices"]))
    return f"{row['question'].strip()}{options}\nAnswer:"


def subject_rows(subject: str) -> list[dict]:
    return [row for row in MMLU if row["subject"] == subject]


def zero_shot_prompts(task: str) -> dict[str, list[str]]:
    """Leaf task -> each doc's prompt, spelled out from lm-eval's YAML templates."""
    if task == "mmlu":
        return {f"mmlu_{subject}": [MMLU_DESCRIPTION.format(subject) + mmlu_question(row)
                                    for row in subject_rows(subject)] for subject in ("anatomy", "astronomy")}
    if task == "hellaswag":
        return {"hellaswag": HELLASWAG_QUERIES}
    rows = {"arc_easy": ARC_EASY, "arc_challenge": ARC_CHALLENGE, "gsm8k": GSM8K}[task]
    return {task: [f"Question: {row['question']}\nAnswer:" for row in rows]}


def build_prompts(task: str, path: Path, shots: int | None = None) -> dict[str, dict[int, str]]:
    """Leaf task -> {doc_id: prompt}, built by lm-eval as simple_evaluate builds them, without any model.

    ``shots`` None keeps the suite's / YAML's count (MMLU 5 in suite=standard, GSM8k 5 from its YAML).
    """
    suite = SuiteConfig(name="standard", tasks=[task], data_files={task: str(path)}, num_fewshot={"mmlu": 5})
    plan = tasks.resolve(suite)
    prompts = {}
    for leaf, task_obj in evaluate.load_tasks(plan).items():
        count = shots if shots is not None else suite.num_fewshot.get(plan.reported[leaf])
        if count is not None:
            task_obj.set_config(key="num_fewshot", value=count)
        task_obj.set_fewshot_seed(1234)
        task_obj.build_all_requests(rank=0, world_size=1)
        prompts[leaf] = {inst.doc_id: inst.args[0] for inst in task_obj.instances}
    return prompts


@pytest.fixture(scope="module")
def shared_index():
    """lm-eval's full task index is built once for this module (it takes ~10-20 s) and reused by every resolve."""
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=[str(tasks.BUNDLED_TASKS)])
    original = tasks.task_manager

    def reuse(names, paths):
        return manager if paths == [str(tasks.BUNDLED_TASKS)] else original(names, paths)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tasks, "task_manager", reuse)
        yield manager


@pytest.fixture(scope="module")
def standard_files(tmp_path_factory) -> dict[str, Path]:
    """One file per task, each in a different format (nested schemas cannot be csv)."""
    folder = tmp_path_factory.mktemp("standard_data")
    return {
        "mmlu": write(MMLU, folder / "mmlu.json"),
        "hellaswag": write(HELLASWAG, folder / "hellaswag_validation.parquet"),
        "arc_easy": write(ARC_EASY, folder / "arc_easy_test.jsonl"),
        "arc_challenge": write(ARC_CHALLENGE, folder / "arc_challenge_test.parquet"),
        "gsm8k": write(GSM8K, folder / "gsm8k_test.csv"),
    }


@pytest.fixture(scope="module")
def standard_run(shared_index, random_llama, standard_files, tmp_path_factory):
    """All five standard tasks in one run, baseline against itself, from local files only, zero-shot."""
    overrides = ["model=hf", f"model.path={random_llama}", "suite=standard",
                 "suite.tasks=[mmlu,hellaswag,arc_easy,arc_challenge,gsm8k]", "compression=none",
                 "eval.batch_size=4", "eval.bootstrap=50", "output.plots=false", f"suite.limit={LIMIT}",
                 f"output.root={tmp_path_factory.mktemp('standard_results')}",
                 # MMLU's 5 shots are checked without a model below; GSM8k at 0 shots keeps generation short.
                 "suite.num_fewshot.mmlu=0", "+suite.num_fewshot.gsm8k=0"]
    # The declared standard tasks take suite.data_files.<task> without a leading '+'.
    overrides += [f"suite.data_files.{task}={path}" for task, path in standard_files.items()]
    run_dir = pipeline.run(compose(overrides))
    return pd.read_parquet(run_dir / "samples.parquet"), pd.read_csv(run_dir / "summary.csv")


def rows_of(samples: pd.DataFrame, task: str) -> pd.DataFrame:
    return samples[samples["task"] == task].sort_values(["group", "doc_id", "filter"]).reset_index(drop=True)


def test_every_task_runs_from_local_files_without_flips(standard_run):
    samples, summary = standard_run
    counts = samples.groupby("task").size().to_dict()
    # limit=3 takes the first three docs of each leaf task: MMLU's two subjects, and GSM8k under both filters.
    assert counts == {"mmlu": 2 * LIMIT, "hellaswag": LIMIT, "arc_easy": LIMIT, "arc_challenge": LIMIT,
                      "gsm8k": 2 * LIMIT}
    assert (samples["pred_base"] == samples["pred_comp"]).all()
    overall = summary[summary["group"] == "all"]
    assert set(overall["task"]) == set(counts)
    assert (summary["flips"] == 0).all()
    headline = overall[overall["headline"].astype(bool)].set_index("task")["metric"].to_dict()
    assert headline == {"mmlu": "acc", "hellaswag": "acc_norm", "arc_easy": "acc_norm", "arc_challenge": "acc_norm",
                        "gsm8k": "exact_match"}


def test_mmlu_is_one_task_with_subject_groups_and_lm_eval_prompts(standard_run):
    samples, summary = standard_run
    mmlu = rows_of(samples, "mmlu")
    assert mmlu["group"].tolist() == ["anatomy"] * LIMIT + ["astronomy"] * LIMIT
    # anatomy and astronomy are both in lm-eval's mmlu_stem group (alias "stem"): one category row
    rows = summary[summary["task"] == "mmlu"]
    assert set(rows["group"]) == {"all", "stem", "anatomy", "astronomy"}
    assert rows.loc[rows["group"] == "stem", "level"].unique().tolist() == ["category"]
    assert set(mmlu["category"]) == {"stem"}
    prompts = zero_shot_prompts("mmlu")
    for _, sample in mmlu.iterrows():
        assert sample["prompt"] == prompts[f"mmlu_{sample['group']}"][sample["doc_id"]]
        assert sample["target"] == str(subject_rows(sample["group"])[sample["doc_id"]]["answer"])
        assert sample["choices"].tolist() == ["A", "B", "C", "D"]


def test_hellaswag_reads_validation_rows_with_lm_eval_preprocessing(standard_run):
    hellaswag = rows_of(standard_run[0], "hellaswag")
    assert hellaswag["doc_id"].tolist() == [0, 1, 2]
    assert hellaswag["prompt"].tolist() == HELLASWAG_QUERIES[:LIMIT]
    assert hellaswag["target"].tolist() == [row["label"] for row in HELLASWAG[:LIMIT]]
    # Brackets are removed after the strip, so the space before a removed "[step]" stays.
    assert hellaswag["choices"].iloc[1].tolist() == [
        " Moist roots slide out of the pot more easily.", "Then paint the pot red.", "The fern is sold at a market.",
        " Throw the fern away."]


@pytest.mark.parametrize("task,rows", [("arc_easy", ARC_EASY), ("arc_challenge", ARC_CHALLENGE)])
def test_arc_prompts_and_targets(standard_run, task, rows):
    arc_rows = rows_of(standard_run[0], task)
    assert arc_rows["prompt"].tolist() == zero_shot_prompts(task)[task][:LIMIT]
    # The target is the index of answerKey among the choice labels, whether they are letters or digits.
    expected = {"arc_easy": ["1", "2", "2"], "arc_challenge": ["0", "1", "2"]}[task]
    assert arc_rows["target"].tolist() == expected
    assert [list(c) for c in arc_rows["choices"]] == [row["choices"]["text"] for row in rows[:LIMIT]]


def test_gsm8k_zero_shot_prompts_targets_and_filters(standard_run):
    gsm8k = rows_of(standard_run[0], "gsm8k")
    assert set(gsm8k["filter"]) == {"strict-match", "flexible-extract"}
    prompts = zero_shot_prompts("gsm8k")["gsm8k"]
    for _, sample in gsm8k.iterrows():
        assert sample["prompt"] == prompts[sample["doc_id"]]
        assert sample["target"] == GSM8K[sample["doc_id"]]["answer"]  # the full solution; the metric strips to N
    assert gsm8k["n_tokens"].notna().all()  # token-level KL ran on the generated answers


# ---- Without a model: other file formats, few-shot contexts, and files that must be refused. ----

@pytest.mark.parametrize("task,suffix", [("mmlu", ".jsonl"), ("mmlu", ".parquet"), ("hellaswag", ".jsonl"),
                                         ("arc_easy", ".parquet"), ("arc_challenge", ".json"), ("gsm8k", ".jsonl"),
                                         ("gsm8k", ".json"), ("gsm8k", ".parquet")])
def test_every_format_gives_the_same_prompts(shared_index, tmp_path, task, suffix):
    rows = {"mmlu": MMLU, "hellaswag": HELLASWAG, "arc_easy": ARC_EASY, "arc_challenge": ARC_CHALLENGE, "gsm8k": GSM8K}
    prompts = build_prompts(task, write(rows[task], tmp_path / f"{task}{suffix}"), shots=0)
    expected = zero_shot_prompts(task)
    assert {leaf: [docs[i] for i in sorted(docs)] for leaf, docs in prompts.items()} == expected


def test_mmlu_five_shot_examples_are_the_subjects_first_rows_of_the_file(shared_index, tmp_path):
    prompts = build_prompts("mmlu", write(MMLU, tmp_path / "mmlu.jsonl"))
    for subject in ("anatomy", "astronomy"):
        rows = subject_rows(subject)
        shots = "".join(f"{mmlu_question(row)} {'ABCD'[row['answer']]}\n\n" for row in rows[:5])
        # The last doc is not among the first five, so its context is exactly the subject's first five rows.
        assert prompts[f"mmlu_{subject}"][5] == MMLU_DESCRIPTION.format(subject) + shots + mmlu_question(rows[5])


def test_gsm8k_is_five_shot_with_examples_drawn_from_the_file(shared_index, tmp_path):
    prompts = build_prompts("gsm8k", write(GSM8K, tmp_path / "gsm8k.jsonl"))["gsm8k"]
    solved = {f"Question: {row['question']}\nAnswer: {row['answer']}" for row in GSM8K}
    for doc_id, prompt in prompts.items():
        *shots, asked = prompt.split("\n\n")
        assert len(shots) == 5 and set(shots) <= solved
        assert asked == f"Question: {GSM8K[doc_id]['question']}\nAnswer:"


@pytest.mark.parametrize("task,rows,shots", [("mmlu", MMLU, 5), ("gsm8k", GSM8K, 5), ("arc_easy", ARC_EASY, 3)])
def test_asked_doc_is_never_among_its_own_few_shot_examples(shared_index, tmp_path, task, rows, shots):
    prompts = build_prompts(task, write(rows, tmp_path / f"{task}.jsonl"), shots=shots)
    for leaf, docs in prompts.items():
        leaf_rows = subject_rows(leaf.removeprefix("mmlu_")) if task == "mmlu" else rows
        for doc_id, prompt in docs.items():
            assert prompt.count(leaf_rows[doc_id]["question"].strip()) == 1, (leaf, doc_id, prompt)
            assert prompt.count("Answer:") == shots + 1


@pytest.mark.parametrize("task,rows,dropped", [
    ("mmlu", MMLU, ["subject", "choices"]), ("hellaswag", HELLASWAG, ["endings"]),
    ("arc_challenge", ARC_CHALLENGE, ["answerKey"]), ("gsm8k", GSM8K, ["answer"]),
])
def test_missing_fields_are_named_before_any_model_is_read(shared_index, tmp_path, task, rows, dropped):
    path = write([{k: v for k, v in row.items() if k not in dropped} for row in rows], tmp_path / f"{task}.jsonl")
    # The model path does not exist either: the data file is checked first, so its error is the one raised.
    cfg = compose(["model=hf", "model.path=/nonexistent/model", "suite=standard", f"suite.tasks=[{task}]",
                   f"suite.data_files.{task}={path}", "compression=none", f"output.root={tmp_path / 'results'}"])
    with pytest.raises(ConfigError, match=f"lacks the field\\(s\\) {', '.join(dropped)} of the "):
        pipeline.run(cfg)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("name,content,message", [
    ("absent.jsonl", None, "does not exist"),
    ("gsm8k.tsv", "question\tanswer\nq\t#### 1\n", r"\.tsv is not supported; use \.jsonl, \.json, \.parquet or \.csv"),
    ("gsm8k.jsonl", '{"question": "unterminated\n', "could not be read as json"),
    ("empty.csv", "question,answer\n", "is empty"),
])
def test_unusable_files_are_refused(shared_index, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        tasks.resolve(SuiteConfig(name="standard", tasks=["gsm8k"], data_files={"gsm8k": str(path)}))


def test_a_file_for_a_task_not_evaluated_and_an_mmlu_file_without_known_subjects(shared_index, tmp_path):
    gsm8k = write(GSM8K, tmp_path / "gsm8k.jsonl")
    with pytest.raises(ConfigError, match="names 'hellaswag', which is not among the evaluated tasks"):
        tasks.resolve(SuiteConfig(tasks=["gsm8k"], data_files={"gsm8k": str(gsm8k), "hellaswag": str(gsm8k)}))
    unknown = write([dict(row, subject="astrology") for row in MMLU], tmp_path / "mmlu.jsonl")
    with pytest.raises(ConfigError, match="task 'mmlu' has no documents to evaluate"):
        tasks.resolve(SuiteConfig(tasks=["mmlu"], data_files={"mmlu": str(unknown)}))


@pytest.mark.parametrize("task,rows", [("mmlu", MMLU), ("hellaswag", HELLASWAG), ("arc_easy", ARC_EASY)])
def test_nested_schema_in_csv_is_refused(shared_index, tmp_path, task, rows):
    path = write(rows, tmp_path / f"{task}.csv")
    with pytest.raises(ConfigError, match="csv"):
        tasks.resolve(SuiteConfig(tasks=[task], data_files={task: str(path)}))
