"""synth_mmlu: four-option questions about the made-up world, lettered A–D exactly as lm-eval's MMLU.

Every fact is taught as statements. A test question asks a fact in a question form that the train split
never pairs with that fact (the other forms are used for it, and this form is used for other facts); a
share of test facts (``unseen``) gets no train question at all, so the model must go from statement to
question on its own. That mix of easy and hard items keeps accuracy away from both chance and 100%.
Training-only texts (question/answer pairs in the allowed forms, option-to-letter drills) help a tiny
model learn the two halves of an MMLU answer, recalling the fact and finding its letter.
"""

from __future__ import annotations

import random

from flipbench.synth.world import SUBJECTS, Attribute, World, cap, question, statement

LETTERS = ("A", "B", "C", "D")


def mc_doc(rng: random.Random, subject: str, attribute: Attribute, entity: str, value: str, form: int) -> dict:
    """One MMLU-shaped doc: the true value among three other values of the same attribute, shuffled."""
    choices = rng.sample([v for v in attribute.values if v != value], 3) + [value]
    rng.shuffle(choices)
    return {"subject": subject, "question": question(attribute, entity, form), "choices": choices,
            "answer": choices.index(value)}


def _facts(world: World) -> dict[str, list[tuple]]:
    """All (subject, attribute, entity, value) facts, grouped by subject."""
    by_subject = {}
    for subject in SUBJECTS:
        entities = world.facts[subject.name]
        by_subject[subject.name] = [(subject.name, attr, entity, values[attr.name])
                                    for entity, values in entities.items() for attr in subject.attributes]
    return by_subject


def _split_facts(world: World, rng: random.Random, n_test: int, unseen: float):
    """Test docs (``n_test`` facts spread evenly over subjects) and, per fact, the question forms the
    train split may use: all three for untested facts, the two others for tested ones, none for the
    ``unseen`` share of tested facts."""
    test, allowed = [], {}
    per_subject = n_test // len(SUBJECTS)
    for facts in _facts(world).values():
        rng.shuffle(facts)
        for i, fact in enumerate(facts):
            allowed[fact] = (0, 1, 2)
            if i < per_subject:
                held_out = rng.randrange(3)
                test.append(mc_doc(rng, *fact, form=held_out))
                hard = i < round(per_subject * unseen)
                allowed[fact] = () if hard else tuple(f for f in (0, 1, 2) if f != held_out)
    return test, allowed


def _drill(rng: random.Random, attribute: Attribute) -> str:
    """Training-only text binding option texts to their letters: the lookup an MMLU answer needs.

    Written so the value and the letter are the same tokens as in a question (" marsh", " B").
    """
    values = rng.sample(attribute.values, 4)
    lines = "\n".join(f"{letter}. {value}" for letter, value in zip(LETTERS, values))
    order = rng.sample(range(4), 4)
    return lines + "".join(f"\nAnswer for {values[i]}: {LETTERS[i]}" for i in order)


def generate(world: World, seed: int, n_test: int, n_train: int, unseen: float,
             open_book: float, n_drills: int) -> tuple[list[dict], list[dict], list[dict]]:
    """Train docs, test docs, and training-only texts (question/answer pairs and letter drills).

    A share ``open_book`` of train docs states the fact before asking it, so the answer can be found in
    the prompt: these teach the letter lookup before recall and lookup must be combined.
    """
    rng = random.Random(f"{seed}:mmlu")
    test, allowed = _split_facts(world, rng, n_test, unseen)
    test_questions = {d["question"] for d in test}
    eligible = [fact for fact, forms in allowed.items() if forms]
    train = []
    while len(train) < n_train:
        fact = rng.choice(eligible)
        doc = mc_doc(rng, *fact, form=rng.choice(allowed[fact]))
        if rng.random() < open_book:
            doc["question"] = f"{statement(fact[1], fact[2], fact[3], rng.randrange(2))} {doc['question']}"
        if doc["question"] not in test_questions:  # cannot happen by construction; kept as the contract
            train.append(doc)
    texts = [{"kind": "qa", "text": f"Question: {question(f[1], f[2], form)}\nAnswer: {f[3]}"}
             for f in eligible for form in allowed[f]]
    attributes = [a for subject in SUBJECTS for a in subject.attributes]
    texts += [{"kind": "drill", "text": _drill(rng, rng.choice(attributes))} for _ in range(n_drills)]
    return train, test, texts


def knowledge(world: World, seed: int) -> list[str]:
    """Paragraphs stating every fact, once per statement form, attributes in a seeded random order."""
    rng = random.Random(f"{seed}:knowledge")
    paragraphs = []
    for subject in SUBJECTS:
        for entity, values in world.facts[subject.name].items():
            for form in (0, 1):
                attrs = list(subject.attributes)
                rng.shuffle(attrs)
                paragraphs.append(" ".join(statement(a, entity, values[a.name], form) for a in attrs))
    return paragraphs


YAML = """\
# MMLU's prompt and scoring (lm_eval/tasks/mmlu/default/_default_template_yaml) on made-up world facts.
# One task with a `subject` field per doc (MMLU splits subjects into tasks; the report groups by the field).
task: synth_mmlu
dataset_path: json
dataset_kwargs:
  data_files:
    train: data/synth_mmlu_train.jsonl
    test: data/synth_mmlu_test.jsonl
training_split: train
test_split: test
fewshot_split: train
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {{subject}}.\\n\\n"
doc_to_text: "{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
