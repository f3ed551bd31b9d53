"""benchmarks.real_table: which method pairs the compression replicas distinguish, on a hand-built table."""

import pandas as pd

from benchmarks import real_table
from benchmarks.provenance import command_line


def test_overlapping_replica_ranges_are_not_distinguished():
    # mmlu w4: rtn is a point at 25%; gptq spans 10-20% (apart from rtn); tacq spans 15-30% (overlaps both).
    table = pd.DataFrame([
        {"task": "mmlu", "bits": 4, "method": "rtn", "flips_rep_min": 0.25, "flips_rep_max": 0.25},
        {"task": "mmlu", "bits": 4, "method": "gptq", "flips_rep_min": 0.10, "flips_rep_max": 0.20},
        {"task": "mmlu", "bits": 4, "method": "tacq", "flips_rep_min": 0.15, "flips_rep_max": 0.30},
    ])
    out = real_table.comparison_table(table).set_index("pair")["distinguished"].to_dict()
    assert out == {"gptq vs rtn": "yes: gptq flips fewer", "gptq vs tacq": "no (ranges overlap)",
                   "rtn vs tacq": "no (ranges overlap)"}


def test_command_line_hides_machine_paths():
    assert (command_line("benchmarks.x", ["--model", "/srv/models/smollm2-135m", "--out=/tmp/o", "--k", "3"])
            == "python -m benchmarks.x --model <smollm2-135m> --out=<o> --k 3")
