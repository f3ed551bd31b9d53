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
    material: str
    product: str
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
        crafts.append(Craft(f"Making a {material} {product}", material, product, steps))
    return crafts


def _context(craft: Craft, name: str, shown: int) -> str:
    """Label, then the first ``shown`` steps as sentences, then the pronoun that starts the next one."""
    pronoun = cap(PEOPLE[name])
    sentences = [f"{name} {craft.steps[0]}."] + [f"{pronoun} {s}." for s in craft.steps[1:shown]]
    return f"{craft.label}: {' '.join(sentences)} {pronoun}"


def narrative(craft: Craft, name: str) -> str:
    """The whole script told about ``name``: the training text that teaches a craft."""
    return _context(craft, name, SCRIPT_LENGTH).rsplit(" ", 1)[0]


def _wrong_endings(rng: random.Random, craft: Craft, crafts: list[Craft], shown: int, hard: float) -> list[str]:
    """Three wrong next steps: maybe a later step of the same craft, then steps of other crafts, preferring
    crafts with the same material or product (their steps name the same things)."""
    wrong = [rng.choice(craft.steps[shown + 1:])] if rng.random() < hard else []
    similar = [c for c in crafts if c is not craft and (c.material == craft.material or c.product == craft.product)]
    while len(wrong) < 3:
        pool = similar if similar and rng.random() < 0.5 else [c for c in crafts if c is not craft]
        candidate = rng.choice(rng.choice(pool).steps)
        if candidate not in wrong and candidate not in craft.steps:
            wrong.append(candidate)
    return wrong


def make_doc(rng: random.Random, crafts: list[Craft], hard: float, weights: list[float] | None = None) -> dict:
    """A doc asking for step ``shown + 1`` of a craft drawn with ``weights`` (uniform if None)."""
    craft = rng.choices(crafts, weights)[0]
    name, shown = rng.choice(sorted(PEOPLE)), rng.randint(1, SCRIPT_LENGTH - 2)
    right = craft.steps[shown]
    endings = [f"{s}." for s in _wrong_endings(rng, craft, crafts, shown, hard) + [right]]
    rng.shuffle(endings)
    return {"activity_label": craft.label, "query": _context(craft, name, shown), "choices": endings,
            "label": str(endings.index(f"{right}."))}


def generate(seed: int, n_test: int, n_train: int, hard: float, zipf: float,
             narratives: int, unseen: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """Train docs, test docs and training-only narratives.

    Test docs are spread evenly over crafts; training (docs and narratives) sees craft ``i`` in proportion
    to ``1 / (i + 1) ** zipf``, so rare crafts are remembered less well, and never sees the last ``unseen``
    crafts (their steps still appear as wrong endings): the hard items, where only a guess from the words
    of the context is left.
    """
    crafts = build_crafts(seed)
    weights = [1 / (i + 1) ** zipf if i < len(crafts) - unseen else 0.0 for i in range(len(crafts))]
    rng = random.Random(f"{seed}:hellaswag")
    test, test_queries = [], set()
    while len(test) < n_test:  # test contexts are unique
        doc = make_doc(rng, crafts, hard)
        if doc["query"] not in test_queries:
            test_queries.add(doc["query"])
            test.append(doc)
    train = []
    while len(train) < n_train:  # train may repeat a context (other endings), never a test one
        doc = make_doc(rng, crafts, hard, weights)
        if doc["query"] not in test_queries:
            train.append(doc)
    people = sorted(PEOPLE)
    texts = [{"kind": "craft", "text": narrative(craft, name)} for craft, w in zip(crafts, weights) if w
             for name in rng.sample(people, max(1, round(narratives * w)))]
    return train, test, texts


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
