"""The bundled synthetic suite and tiny model: disjoint splits, a deterministic generator, a model that learned.

The model check is hand-rolled (log-likelihood of " A".." D" after the prompt), independent of lm-eval.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from flipbench.synth.generate import TASKS, Sizes, write

ROOT = Path(__file__).resolve().parents[1]
TASK_DIR = ROOT / "tasks" / "synth"
MODEL_DIR = ROOT / "flipbench" / "assets" / "tiny"
SMALL = Sizes(mmlu_test=20, arc_test=20, arc_train=200, hellaswag_test=20, hellaswag_train=200,
              narratives=2, gsm8k_test=10, gsm8k_train=200)


def _docs(task: str, split: str, folder: Path = TASK_DIR) -> list[dict]:
    lines = (folder / "data" / f"{task}_{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _question_hash(doc: dict) -> str:
    return _hash(doc.get("question") or doc["query"])


def _doc_hash(doc: dict) -> str:
    content = {k: v for k, v in doc.items() if k != "id"}  # ARC ids name the split, so leave them out
    return _hash(json.dumps(content, sort_keys=True))


@pytest.mark.parametrize("task", TASKS)
def test_no_test_item_appears_in_train(task):
    test, train = _docs(task, "test"), _docs(task, "train")
    assert len(test) >= 100 and len(train) > len(test)
    train_docs = {_doc_hash(d) for d in train}
    train_questions = {_question_hash(d) for d in train}
    assert not [d for d in test if _doc_hash(d) in train_docs]
    # Stricter: not even the question (or HellaSwag context) of a test doc is seen in training.
    assert not [d for d in test if _question_hash(d) in train_questions]
    assert len({_question_hash(d) for d in test}) == len(test)


def test_generator_is_deterministic(tmp_path):
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    write(first, 0, SMALL)
    write(second, 0, SMALL)
    write(other, 1, SMALL)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(files) == 15
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), rel
    data = [rel for rel in files if rel.suffix == ".jsonl"]
    assert all((first / rel).read_bytes() != (other / rel).read_bytes() for rel in data)


def test_shipped_tasks_match_the_generator(tmp_path):
    info = json.loads((TASK_DIR / "data" / "generation.json").read_text())
    write(tmp_path, info["seed"], Sizes(**info["sizes"]))
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file():
            shipped = TASK_DIR / path.relative_to(tmp_path)
            assert shipped.read_bytes() == path.read_bytes(), f"{shipped} is stale: python -m flipbench.synth.generate"


def test_task_yamls_form_the_synth_group_with_relative_data_files():
    group = yaml.safe_load((TASK_DIR / "synth.yaml").read_text())
    assert group["group"] == "synth" and group["task"] == list(TASKS)
    for task in TASKS:
        cfg = yaml.safe_load((TASK_DIR / f"{task}.yaml").read_text())
        assert cfg["task"] == task and cfg["dataset_path"] == "json"
        for split, rel in cfg["dataset_kwargs"]["data_files"].items():
            assert not Path(rel).is_absolute() and (TASK_DIR / rel).exists(), (task, split, rel)
    gsm8k = yaml.safe_load((TASK_DIR / "synth_gsm8k.yaml").read_text())
    assert [f["name"] for f in gsm8k["filter_list"]] == ["strict-match", "flexible-extract"]


def _mmlu_prompt(doc: dict) -> str:
    """MMLU's zero-shot prompt, written out by hand."""
    options = "".join(f"\n{letter}. {choice}" for letter, choice in zip("ABCD", doc["choices"]))
    return (f"The following are multiple choice questions (with answers) about {doc['subject']}.\n\n"
            f"{doc['question'].strip()}{options}\nAnswer:")


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    return model, tokenizer


def test_tiny_model_is_small_and_described(tiny):
    model, tokenizer = tiny
    size = sum(p.stat().st_size for p in MODEL_DIR.iterdir())
    assert size < 25 * 2**20
    facts = json.loads((MODEL_DIR / "training.json").read_text())
    assert facts["parameters"] == sum(p.numel() for p in model.parameters())
    assert tokenizer.encode("x")[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token and tokenizer.pad_token


def test_tiny_model_beats_chance_on_synth_mmlu(tiny):
    model, tokenizer = tiny
    letters = [tokenizer.encode(f"Answer: {x}", add_special_tokens=False)[-1] for x in "ABCD"]
    assert [tokenizer.decode([t]) for t in letters] == [" A", " B", " C", " D"]  # one token each
    docs = _docs("synth_mmlu", "test")[:20]
    correct = 0
    with torch.no_grad():
        for doc in docs:
            ids = torch.tensor([tokenizer.encode(_mmlu_prompt(doc))])
            logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1], dim=-1)
            correct += int(logprobs[letters].argmax()) == doc["answer"]
    # Chance is 5/20; 10 or more correct happens by chance with probability ~1.4%.
    assert correct >= 10, f"{correct}/20"


def _train(task_dir: Path, out: Path, **overrides):
    from flipbench.synth.train import TrainConfig, train

    train(task_dir, out, TrainConfig(**overrides), log=lambda *_: None)
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


@pytest.mark.slow  # trains the tiny model twice (~14 s)
def test_training_is_deterministic_given_the_seed(tmp_path):
    write(tmp_path / "tasks", 0, SMALL)
    shape = dict(hidden_size=32, layers=1, heads=2, intermediate_size=64, vocab_size=400, steps=6, batch_docs=4,
                 warmup=2, log_every=3)
    first = _train(tmp_path / "tasks", tmp_path / "m1", **shape)
    second = _train(tmp_path / "tasks", tmp_path / "m2", **shape)
    other = _train(tmp_path / "tasks", tmp_path / "m3", seed=1, **shape)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    facts = json.loads((tmp_path / "m1" / "training.json").read_text())
    assert "synth_mmlu_test" not in json.dumps(facts) and set(facts["train_docs"]) >= set(TASKS)


@pytest.mark.slow
def test_make_tiny_model_reproduces_the_shipped_weights(tmp_path):
    """The full `make tiny-model` (about 10 minutes on 2 CPU cores): same seed, same data, same weights."""
    shipped = json.loads((MODEL_DIR / "training.json").read_text())
    config = {k: v for k, v in shipped["config"].items()}
    rebuilt = _train(TASK_DIR, tmp_path / "tiny", **config)
    from safetensors.torch import load_file

    reference = load_file(str(MODEL_DIR / "model.safetensors"))
    assert rebuilt.keys() == reference.keys()
    assert all(torch.equal(rebuilt[k], reference[k]) for k in reference)
