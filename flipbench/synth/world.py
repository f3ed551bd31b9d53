"""A made-up world drawn from a seed: the facts the tiny model must memorise.

Entity names are invented so no pre-trained knowledge (there is none anyway) could answer; attribute values
are plain English words so questions read naturally. Each attribute has four values, in a fixed order
(synth_mmlu's options A–D). Every fact has two statement forms (taught as text) and three question forms
(used by synth_mmlu), so a test question can use a form the train split never paired with that fact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SYLLABLES = ("ka", "lo", "mi", "ze", "ru", "ta", "vi", "no", "sha", "dri", "bel", "gor", "fen", "tul", "mar",
             "qui", "sel", "dor", "pim", "wex", "an", "os", "ul", "tre", "vak", "lun", "sor", "ith")


@dataclass(frozen=True)
class Attribute:
    """One attribute of a subject's entities: its values, question forms and statement forms.

    Templates use ``{e}`` for the entity (``{E}`` capitalised at a sentence start) and ``{v}`` for the value.
    """

    name: str
    values: tuple[str, ...]
    questions: tuple[str, str, str]
    statements: tuple[str, str]


@dataclass(frozen=True)
class Subject:
    """A subject (the synth_mmlu per-subject breakdown): how its entities are named and what they have."""

    name: str
    entity_form: str  # how a generated name is shown, e.g. "the {n}" or "King {N}"
    attributes: tuple[Attribute, ...]


def _attr(name, values, questions, statements):
    return Attribute(name, tuple(values.split(", ")), tuple(questions), tuple(statements))


COLORS = "red, blue, green, yellow"
SUBJECTS = (
    Subject("zoology", "the {n}", (
        _attr("habitat", "marsh, desert, forest, cave",
              ["Where does {e} live?", "Which habitat is home to {e}?", "In which habitat is {e} found?"],
              ["{E} lives in the {v}.", "The {v} is home to {e}."]),
        _attr("diet", "berries, fish, insects, roots",
              ["What does {e} eat?", "What is the main food of {e}?", "{E} feeds mostly on which food?"],
              ["{E} eats {v}.", "The main food of {e} is {v}."]),
        _attr("color", COLORS,
              ["What color is {e}?", "Which color is the fur of {e}?", "{E} has fur of which color?"],
              ["{E} is {v}.", "The fur of {e} is {v}."]),
    )),
    Subject("geography", "{N}", (
        _attr("country", "Ostrand, Velia, Karun, Demmet",
              ["In which country is {e}?", "{E} is a city of which country?", "Which country does {e} belong to?"],
              ["{E} is a city in {v}.", "The country of {e} is {v}."]),
        _attr("climate", "rainy, dry, snowy, windy",
              ["What is the climate of {e}?", "Which word describes the weather in {e}?",
               "The weather in {e} is usually what?"],
              ["The climate of {e} is {v}.", "The weather in {e} is usually {v}."]),
        _attr("export", "salt, copper, wool, glass",
              ["What does {e} export?", "Which good is the main export of {e}?", "{E} is known for exporting what?"],
              ["{E} exports {v}.", "The main export of {e} is {v}."]),
    )),
    Subject("history", "King {N}", (
        _attr("kingdom", "Arveth, Gollan, Sisk, Marrow",
              ["Which kingdom did {e} rule?", "{E} was the ruler of which kingdom?", "Over which kingdom did {e} reign?"],
              ["{E} ruled the kingdom of {v}.", "The kingdom of {v} was ruled by {e}."]),
        _attr("century", "the 2nd century, the 3rd century, the 4th century, the 5th century",
              ["When did {e} rule?", "In which century did {e} reign?", "{E} was on the throne in which century?"],
              ["{E} ruled in {v}.", "In {v}, {e} was on the throne."]),
        _attr("deed", "building bridges, writing laws, winning wars, founding schools",
              ["What is {e} remembered for?", "{E} is best known for what?", "Which deed made {e} famous?"],
              ["{E} is remembered for {v}.", "{E} became famous for {v}."]),
    )),
    Subject("chemistry", "{n}ium", (
        _attr("color", "silver, gold, green, blue",
              ["What color is {e}?", "Which color does pure {e} have?", "Pure {e} is what color?"],
              ["{E} is {v}.", "Pure {e} has a {v} color."]),
        _attr("reacts", "water, acid, air, salt",
              ["What does {e} react with?", "Which substance makes {e} react?", "{E} reacts strongly with what?"],
              ["{E} reacts with {v}.", "Contact with {v} makes {e} react."]),
        _attr("use", "making glass, making coins, making glue, making paint",
              ["What is {e} used for?", "{E} is mainly used for what?", "Which use is {e} known for?"],
              ["{E} is used for {v}.", "People use {e} for {v}."]),
    )),
    Subject("astronomy", "{N}", (
        _attr("star", "Altor, Bremis, Cygna, Doral",
              ["Which star does {e} orbit?", "{E} circles which star?", "Around which star does {e} travel?"],
              ["{E} orbits the star {v}.", "The star {v} is circled by {e}."]),
        _attr("moons", "one moon, two moons, three moons, four moons",
              ["How many moons does {e} have?", "{E} has how many moons?", "What is the number of moons of {e}?"],
              ["{E} has {v}.", "Around {e} travel {v}."]),
        _attr("surface", "ice, sand, rock, lava",
              ["What covers the surface of {e}?", "The surface of {e} is made of what?", "Which material covers {e}?"],
              ["The surface of {e} is covered in {v}.", "{E} is covered in {v}."]),
    )),
)

PEOPLE = {  # name -> pronoun; used by the ARC, HellaSwag and GSM8k generators
    **dict.fromkeys("Ana Mira Lena Tess Nora Ivy Rosa Lily Maya Zoe Ella Jade Cleo Vera Gwen Hana Ruth Iris".split(), "she"),
    **dict.fromkeys("Tom Ben Sam Leo Max Dan Eli Hugo Ivan Omar Paul Raj Theo Finn Carl Abe Jack Owen".split(), "he"),
}


@dataclass
class World:
    """Entities per subject with their attribute values: ``facts[subject][entity][attribute] = value``."""

    seed: int
    facts: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)

    def subject(self, name: str) -> Subject:
        return next(s for s in SUBJECTS if s.name == name)


def cap(text: str) -> str:
    """Capitalise the first letter only (``str.capitalize`` would lower-case proper names)."""
    return text[:1].upper() + text[1:]


def invent_names(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """``count`` new two- or three-syllable names, distinct from each other and from ``taken``."""
    names: list[str] = []
    while len(names) < count:
        name = "".join(rng.choice(SYLLABLES) for _ in range(rng.choice((2, 2, 3))))
        if name not in taken and len(name) <= 9:
            taken.add(name)
            names.append(name)
    return names


def build_world(seed: int, entities_per_subject: int = 24) -> World:
    """Draw every subject's entities and their attribute values from ``seed`` (same seed, same world)."""
    rng = random.Random(f"{seed}:world")
    world = World(seed=seed)
    taken: set[str] = set()
    for subject in SUBJECTS:
        entities = {}
        for raw in invent_names(rng, entities_per_subject, taken):
            shown = subject.entity_form.format(n=raw, N=cap(raw))
            entities[shown] = {a.name: rng.choice(a.values) for a in subject.attributes}
        world.facts[subject.name] = entities
    return world


def statement(attribute: Attribute, entity: str, value: str, form: int) -> str:
    """One fact as a sentence, in statement form ``form`` (0 or 1)."""
    return attribute.statements[form].format(e=entity, E=cap(entity), v=value)


def question(attribute: Attribute, entity: str, form: int) -> str:
    """The question asking for ``attribute`` of ``entity``, in question form ``form`` (0, 1 or 2)."""
    return attribute.questions[form].format(e=entity, E=cap(entity))
