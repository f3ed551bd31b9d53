"""Write the synthetic suite: ``python -m flipbench.synth.generate [--seed 0] [--out tasks/synth]``.

Output (all deterministic given the seed and sizes):
- ``synth.yaml`` (lm-eval group ``synth``) and one task YAML per task, whose ``data_files`` are relative to
  the YAML's folder (flipbench resolves them against it at run time);
- ``data/<task>_{train,test}.jsonl``: the docs, test and train disjoint by question text;
- ``data/synth_world_train.jsonl``: training-only text that teaches what the questions ask about (fact
  statements, question/answer pairs, craft narratives). It is never evaluated.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from flipbench.synth import arc, gsm8k, hellaswag, mmlu
from flipbench.synth.world import build_world

TASKS = ("synth_mmlu", "synth_arc", "synth_hellaswag", "synth_gsm8k")
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "tasks" / "synth"
GROUP_YAML = """\
# The bundled synthetic suite (python -m flipbench.synth.generate writes this folder).
group: synth
task:
""" + "".join(f"  - {t}\n" for t in TASKS) + """\
metadata:
  version: 1.0
"""


@dataclass(frozen=True)
class Sizes:
    """Docs per split. Test splits are small so a baseline + compressed run of the suite stays cheap."""

    mmlu_test: int = 200
    mmlu_unseen: float = 0.25  # share of test facts with no train question at all (the hard items)
    arc_test: int = 200
    arc_train: int = 8000
    hellaswag_test: int = 200
    hellaswag_train: int = 4000
    hellaswag_hard: float = 0.5  # share of docs with a later step of the same craft among the endings
    hellaswag_zipf: float = 2.0  # craft i is trained on in proportion to 1 / (i + 1) ** zipf
    hellaswag_unseen: int = 6  # crafts (of 24) asked in test but never trained on
    narratives: int = 24  # narratives of the most frequent craft
    gsm8k_test: int = 100
    gsm8k_train: int = 8000


def build(seed: int, sizes: Sizes) -> dict[str, list[dict]]:
    """All files' records, keyed by file stem (``synth_mmlu_train`` …), without touching the disk."""
    world = build_world(seed)
    files = {}
    train, test, facts_qa = mmlu.generate(world, seed, sizes.mmlu_test, sizes.mmlu_unseen)
    random.Random(f"{seed}:order").shuffle(test)  # mix subjects: lm-eval's limit=N takes the first N docs
    files["synth_mmlu_train"], files["synth_mmlu_test"] = train, test
    files["synth_arc_train"], files["synth_arc_test"] = arc.generate(seed, sizes.arc_test, sizes.arc_train)
    train, test, stories = hellaswag.generate(seed, sizes.hellaswag_test, sizes.hellaswag_train,
                                              sizes.hellaswag_hard, sizes.hellaswag_zipf, sizes.narratives,
                                              sizes.hellaswag_unseen)
    files["synth_hellaswag_train"], files["synth_hellaswag_test"] = train, test
    files["synth_gsm8k_train"], files["synth_gsm8k_test"] = gsm8k.generate(seed, sizes.gsm8k_test, sizes.gsm8k_train)
    facts = [{"kind": "fact", "text": text} for text in mmlu.knowledge(world, seed)]
    files["synth_world_train"] = facts + facts_qa + stories
    return files


def write(out: Path, seed: int, sizes: Sizes) -> list[Path]:
    """Generate into ``out`` (created if missing); returns the written paths."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    written = []
    for stem, records in build(seed, sizes).items():
        path = out / "data" / f"{stem}.jsonl"
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        written.append(path)
    yamls = {"synth": GROUP_YAML, "synth_mmlu": mmlu.YAML, "synth_arc": arc.YAML,
             "synth_hellaswag": hellaswag.YAML, "synth_gsm8k": gsm8k.YAML}
    for name, text in yamls.items():
        path = out / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        written.append(path)
    info = {"seed": seed, "sizes": asdict(sizes)}
    path = out / "data" / "generation.json"
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return written + [path]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    paths = write(args.out, args.seed, Sizes())
    print(f"wrote {len(paths)} files under {args.out}")


if __name__ == "__main__":
    main()
