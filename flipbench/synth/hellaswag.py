"""synth_hellaswag: pick the next step of a made-up craft, HellaSwag-style (context + four endings).

Each craft has a fixed six-step script, taught as narratives with varying people. A doc shows the first
steps and asks for the next one; wrong endings are steps of other crafts and, for harder items, a later
step of the same craft. Steps differ in length, so length-normalised accuracy (acc_norm) is the headline,
as in HellaSwag.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from flipbench.synth.world import PEOPLE, cap

MATERIALS = ("reed", "clay", "birch", "copper", "wool", "bamboo", "willow", "leather", "pine", "tin")
PRODUCTS = ("lamp", "basket", "drum", "kite", "boat", "bowl", "rug", "flute", "mask", "cart", "bench", "bell")
TOOLS = ("knife", "saw", "hammer", "brush", "chisel", "needle", "file", "drill")
COLORS = ("red", "blue", "green", "yellow", "white", "black")
STEPS = (  # {m} material, {p} product, {t} tool, {c} color
    "picks up a {t}", "washes the {m} in cold water", "cuts the {m} into thin strips",
    "heats the {t} over the fire until it glows", "sands the rough edges", "paints the {p} {c}",
    "ties the pieces together with string", "lets everything dry in the sun for a whole afternoon",
    "hammers a nail into the frame", "measures the {m} twice", "soaks the {m} in warm oil",
    "glues a handle to the base", "polishes the {p} with a soft cloth", "bends the {m} into a wide circle",
    "carves a small star on the side", "shows the finished {p} to a friend", "sweeps the floor",
    "sharpens the {t} on a flat stone", "draws a plan on paper", "waits",
)
SCRIPT_LENGTH = 6


@dataclass(frozen=True)
class Craft:
    """A craft's label (HellaSwag's activity_label) and its ordered steps."""

    label: str
    steps: tuple[str, ...]


def build_crafts(seed: int, count: int = 24) -> list[Craft]:
    """``count`` crafts with distinct (material, product) pairs and seeded six-step scripts."""
    rng = random.Random(f"{seed}:crafts")
    pairs = rng.sample([(m, p) for m in MATERIALS for p in PRODUCTS], count)
    crafts = []
    for material, product in pairs:
        fill = {"m": material, "p": product}
        steps = tuple(s.format(t=rng.choice(TOOLS), c=rng.choice(COLORS), **fill)
                      for s in rng.sample(STEPS, SCRIPT_LENGTH))
        crafts.append(Craft(f"Making a {material} {product}", steps))
    return crafts


def _context(craft: Craft, name: str, shown: int) -> str:
    """Label, then the first ``shown`` steps as sentences, then the pronoun that starts the next one."""
    pronoun = cap(PEOPLE[name])
    sentences = [f"{name} {craft.steps[0]}."] + [f"{pronoun} {s}." for s in craft.steps[1:shown]]
    return f"{craft.label}: {' '.join(sentences)} {pronoun}"


def narrative(craft: Craft, name: str) -> str:
    """The whole script told about ``name``: the training text that teaches a craft."""
    return _context(craft, name, SCRIPT_LENGTH).rsplit(" ", 1)[0]


def make_doc(rng: random.Random, crafts: list[Craft], hard: float) -> dict:
    """A doc asking for step ``shown + 1`` of a random craft; a later step is a distractor with prob. ``hard``."""
    craft = rng.choice(crafts)
    name, shown = rng.choice(sorted(PEOPLE)), rng.randint(1, SCRIPT_LENGTH - 2)
    right = craft.steps[shown]
    wrong = [rng.choice(craft.steps[shown + 1:])] if rng.random() < hard else []
    others = [s for c in crafts if c is not craft for s in c.steps if s not in craft.steps]
    while len(wrong) < 3:
        candidate = rng.choice(others)
        if candidate not in wrong:
            wrong.append(candidate)
    endings = [f"{s}." for s in wrong + [right]]
    rng.shuffle(endings)
    return {"activity_label": craft.label, "query": _context(craft, name, shown), "choices": endings,
            "label": str(endings.index(f"{right}."))}


def generate(seed: int, n_test: int, n_train: int, hard: float) -> tuple[list[dict], list[dict], list[Craft]]:
    """Test docs, then train docs whose contexts never equal a test context, and the crafts behind them."""
    crafts = build_crafts(seed)
    rng = random.Random(f"{seed}:hellaswag")
    test, test_queries = [], set()
    while len(test) < n_test:  # test contexts are unique
        doc = make_doc(rng, crafts, hard)
        if doc["query"] not in test_queries:
            test_queries.add(doc["query"])
            test.append(doc)
    train = []
    while len(train) < n_train:  # train may repeat a context (other endings), never a test one
        doc = make_doc(rng, crafts, hard)
        if doc["query"] not in test_queries:
            train.append(doc)
    return train, test, crafts


YAML = """\
# HellaSwag's prompt and scoring (lm_eval/tasks/hellaswag/hellaswag.yaml). The docs are stored already
# processed (query, choices), so no process_docs function is needed.
task: synth_hellaswag
dataset_path: json
dataset_kwargs:
  data_files:
    train: data/synth_hellaswag_train.jsonl
    test: data/synth_hellaswag_test.jsonl
output_type: multiple_choice
training_split: train
test_split: test
doc_to_text: "{{query}}"
doc_to_target: "{{label}}"
doc_to_choice: "choices"
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
