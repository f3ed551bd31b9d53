"""synth_mmlu: four-option questions about the made-up world, lettered A–D exactly as lm-eval's MMLU.

Every fact is taught as statements. A test question asks a fact in a question form that the train split
never pairs with that fact (the other forms are used for it, and this form is used for other facts); a
share of test facts (``unseen``) gets no train question at all, so the model must go from statement to
question on its own. That mix of easy and hard items keeps accuracy away from both chance and 100%.

The options are an attribute's four values in a fixed order, like a questionnaire. Finding the letter of a
recalled value among shuffled options ("symbol binding") is a circuit a 1M-parameter model does not form
within a CPU-minutes budget: trained on 64k examples where the answer was even stated in the question,
its loss on the letter stayed at chance. With a fixed order the letter follows from the recalled value,
so the task measures what quantization should disturb here: memorised facts.
"""

from __future__ import annotations

import random

from flipbench.synth.world import SUBJECTS, Attribute, World, question, statement

def mc_doc(subject: str, attribute: Attribute, entity: str, value: str, form: int) -> dict:
    """One MMLU-shaped doc: the attribute's four values as options, in their fixed order."""
    choices = list(attribute.values)
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
                test.append(mc_doc(*fact, form=held_out))
                hard = i < round(per_subject * unseen)
                allowed[fact] = () if hard else tuple(f for f in (0, 1, 2) if f != held_out)
    return test, allowed


def generate(world: World, seed: int, n_test: int, unseen: float) -> tuple[list[dict], list[dict], list[dict]]:
    """Train docs (every fact in every form it may use, once), test docs, and training-only
    question/answer texts in the same forms."""
    rng = random.Random(f"{seed}:mmlu")
    test, allowed = _split_facts(world, rng, n_test, unseen)
    train = [mc_doc(*fact, form=form) for fact, forms in allowed.items() for form in forms]
    rng.shuffle(train)
    texts = [{"kind": "qa", "text": f"Question: {question(f[1], f[2], form)}\nAnswer: {f[3]}"}
             for f, forms in allowed.items() for form in forms]
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
