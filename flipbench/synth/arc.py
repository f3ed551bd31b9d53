"""synth_arc: short reasoning questions whose choice texts are scored as continuations, as in lm-eval's ARC.

The question alone carries the information (lm-eval scores each choice without showing the others).
Item kinds range from copying (a rule applied to a named person) through comparisons to picking the
right one of two rules, so accuracy depends on the mix in ``KINDS``.
"""

from __future__ import annotations

import random

from flipbench.synth.world import PEOPLE

NAMES = sorted(PEOPLE)
THINGS = ("coins", "shells", "stamps", "marbles", "cards", "books")
JOBS = ("baker", "farmer", "sailor", "miner", "painter", "weaver")
COLORS = ("red", "blue", "green", "yellow", "black", "white")
LABELS = ("A", "B", "C", "D")


def _compare(rng: random.Random) -> tuple[str, list[str], str]:
    (a, b), (x, y) = rng.sample(NAMES, 2), rng.sample(range(10, 100), 2)
    thing, more = rng.choice(THINGS), rng.random() < 0.5
    question = f"{a} has {x} {thing} and {b} has {y} {thing}. Who has {'more' if more else 'fewer'} {thing}?"
    return question, [a, b], a if (x > y) == more else b


def _rule(rng: random.Random) -> tuple[str, list[str], str]:
    job, name = rng.choice(JOBS), rng.choice(NAMES)
    color, *others = rng.sample(COLORS, 4)
    question = f"Every {job} in this town wears a {color} hat. {name} is a {job}. What color is the hat of {name}?"
    return question, [color] + others, color


def _two_rules(rng: random.Random) -> tuple[str, list[str], str]:
    (job, other), (color, other_color) = rng.sample(JOBS, 2), rng.sample(COLORS, 2)
    name = rng.choice(NAMES)
    rules = [f"every {job} wears a {color} hat", f"every {other} wears a {other_color} hat"]
    rng.shuffle(rules)
    question = f"In this town {rules[0]} and {rules[1]}. {name} is a {job}. What color is the hat of {name}?"
    choices = [color, other_color] + rng.sample([c for c in COLORS if c not in (color, other_color)], 2)
    return question, choices, color


def _sums(rng: random.Random) -> tuple[str, list[str], str]:
    while True:
        a, b, c, d = (rng.randint(1, 9) for _ in range(4))
        if a + b != c + d:
            break
    first, second = f"{a} + {b}", f"{c} + {d}"
    larger = rng.random() < 0.5
    question = f"Which is {'larger' if larger else 'smaller'}: {first} or {second}?"
    wins = (a + b > c + d) == larger
    return question, [first, second], first if wins else second


def _sequence(rng: random.Random) -> tuple[str, list[str], str]:
    start, step = rng.randint(1, 80), rng.randint(1, 3)
    seq = [start + i * step for i in range(4)]
    nxt = seq[-1] + step
    question = f"What number comes next: {', '.join(map(str, seq))}, ...?"
    wrong = sorted({nxt + 1, nxt - 1, nxt + 2, nxt - 2} - {nxt, seq[-1]})[:3]
    return question, [str(nxt)] + [str(w) for w in wrong], str(nxt)


def _parity(rng: random.Random) -> tuple[str, list[str], str]:
    n = rng.randint(10, 99)
    return f"Is the number {n} even or odd?", ["even", "odd"], "even" if n % 2 == 0 else "odd"


# kind -> (generator, weight). Copying a stated rule and comparing small sums are the easy kinds;
# comparisons bound to names, two competing rules and number sequences are the hard ones.
KINDS = {"rule": (_rule, 2), "sums": (_sums, 2), "compare": (_compare, 2), "two_rules": (_two_rules, 2),
         "sequence": (_sequence, 1), "parity": (_parity, 1)}


def make_doc(rng: random.Random, kind: str, index: str) -> dict:
    """One ARC-shaped doc (``choices.text``/``choices.label``/``answerKey``) of the given kind."""
    question, choices, answer = KINDS[kind][0](rng)
    choices = list(choices)
    rng.shuffle(choices)
    labels = list(LABELS[: len(choices)])
    return {"id": index, "kind": kind, "question": question,
            "choices": {"text": choices, "label": labels}, "answerKey": labels[choices.index(answer)]}


def _draw(rng: random.Random, count: int, split: str, exclude: set[str]) -> list[dict]:
    kinds = [k for k, (_, weight) in KINDS.items() for _ in range(weight)]
    docs, seen = [], set(exclude)
    while len(docs) < count:
        doc = make_doc(rng, rng.choice(kinds), f"synth_arc/{split}/{len(docs)}")
        if doc["question"] not in seen:  # a question never repeats, within or across splits
            seen.add(doc["question"])
            docs.append(doc)
    return docs


def generate(seed: int, n_test: int, n_train: int) -> tuple[list[dict], list[dict]]:
    """Test docs first, then train docs whose questions differ from every test question."""
    rng = random.Random(f"{seed}:arc")
    test = _draw(rng, n_test, "test", set())
    train = _draw(rng, n_train, "train", {d["question"] for d in test})
    return train, test


YAML = """\
# ARC's prompt and scoring (lm_eval/tasks/arc/arc_easy.yaml): choice texts scored as continuations.
task: synth_arc
dataset_path: json
dataset_kwargs:
  data_files:
    train: data/synth_arc_train.jsonl
    test: data/synth_arc_test.jsonl
output_type: multiple_choice
training_split: train
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
should_decontaminate: true
doc_to_decontamination_query: "Question: {{question}}\\nAnswer:"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""
