"""synth_gsm8k: short word problems with worked answers ending in ``#### N``, as in lm-eval's GSM8k.

Numbers stay small (sums up to 29, single-digit products) so the arithmetic is a table a tiny model can
learn; one-step problems are the easy items, two-step problems (a sum then a difference) the hard ones. Worked answers stay within ``max_gen_toks`` of the tiny tokenizer.
"""

from __future__ import annotations

import random

from flipbench.synth.world import PEOPLE, cap

NAMES = sorted(PEOPLE)
ITEMS = ("apples", "pencils", "marbles", "stickers", "cookies", "shells", "books", "stamps")


def _add(rng, name, pronoun, item):
    x, y = rng.randint(2, 20), rng.randint(2, 9)
    question = f"{name} has {x} {item}. {cap(pronoun)} finds {y} more. How many {item} does {name} have now?"
    return question, [f"{name} has {x} + {y} = {x + y} {item} now."], x + y


def _sub(rng, name, pronoun, item):
    x = rng.randint(5, 20)
    y = rng.randint(2, min(9, x - 1))
    question = f"{name} has {x} {item}. {cap(pronoun)} gives away {y}. How many {item} does {name} have left?"
    return question, [f"{name} has {x} - {y} = {x - y} {item} left."], x - y


def _mul(rng, name, pronoun, item):
    boxes, each = rng.randint(2, 9), rng.randint(2, 9)
    question = f"{name} has {boxes} boxes. Each box holds {each} {item}. How many {item} does {name} have?"
    return question, [f"{name} has {boxes} * {each} = {boxes * each} {item}."], boxes * each


def _two_step(rng, name, pronoun, item):
    x, y = rng.randint(2, 12), rng.randint(2, 9)
    z = rng.randint(2, min(9, x + y - 1))
    question = (f"{name} has {x} {item}. {cap(pronoun)} buys {y} more and then gives away {z}. "
                f"How many {item} does {name} have left?")
    steps = [f"{name} has {x} + {y} = {x + y} {item}.", f"Then {pronoun} has {x + y} - {z} = {x + y - z} {item} left."]
    return question, steps, x + y - z


KINDS = {"add": (_add, 3), "sub": (_sub, 3), "mul": (_mul, 2), "two_step": (_two_step, 2)}


def make_doc(rng: random.Random) -> dict:
    """One GSM8k-shaped doc: ``question`` and ``answer`` (worked steps, one per line, then ``#### N``)."""
    kinds = [k for k, (_, weight) in KINDS.items() for _ in range(weight)]
    kind = rng.choice(kinds)
    name = rng.choice(NAMES)
    question, steps, result = KINDS[kind][0](rng, name, PEOPLE[name], rng.choice(ITEMS))
    return {"kind": kind, "question": question, "answer": "\n".join(steps) + f"\n#### {result}"}


def generate(seed: int, n_test: int, n_train: int) -> tuple[list[dict], list[dict]]:
    """Test docs with unique questions, then train docs whose questions are not among them."""
    rng = random.Random(f"{seed}:gsm8k")
    splits, seen = [], set()
    for count in (n_test, n_train):
        docs = []
        while len(docs) < count:
            doc = make_doc(rng)
            if doc["question"] not in seen:
                seen.add(doc["question"])
                docs.append(doc)
        splits.append(docs)
    test, train = splits
    return train, test


YAML = """\
# GSM8k's prompt, stop sequences, filters and scoring (lm_eval/tasks/gsm8k/gsm8k.yaml), zero-shot:
# the tiny model was trained on this exact format, and five shots would triple the evaluation cost.
task: synth_gsm8k
dataset_path: json
dataset_kwargs:
  data_files:
    train: data/synth_gsm8k_train.jsonl
    test: data/synth_gsm8k_test.jsonl
output_type: generate_until
training_split: train
fewshot_split: train
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{answer}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore:
      - ","
      - "\\\\$"
      - "(?s).*#### "
      - "\\\\.$"
generation_kwargs:
  until:
    - "Question:"
    - "\\n\\n"
    - "</s>"
  do_sample: false
  temperature: 0.0
  max_gen_toks: 48
repeats: 1
num_fewshot: 0
filter_list:
  - name: "strict-match"
    filter:
      - function: "regex"
        regex_pattern: "#### (\\\\-?[0-9\\\\.\\\\,]+)"
      - function: "take_first"
  - name: "flexible-extract"
    filter:
      - function: "regex"
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{2,})|(-?[0-9]+)"
      - function: "take_first"
metadata:
  version: 3.0
"""
