"""The sweep report's decision view: per-member verdict with the worst task's intervals, and the cheapest passing
member, from hand-made tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flipbench import sweep


def _tables():
    roster = pd.DataFrame({"run": ["0-rtn-w2", "1-rtn-w4", "2-rtn-w8", "3-gptq-w3"],
                           "status": ["complete", "complete", "complete", "failed"],
                           "gate": ["FAIL", "PASS", "PASS", ""], "error": ["", "", "", "RuntimeError: x"]})
    rows = []
    for run, bits, flips in (("0-rtn-w2", 2.12, (0.30, 0.50)), ("1-rtn-w4", 4.13, (0.02, 0.01)),
                             ("2-rtn-w8", 8.16, (0.0, 0.005))):
        for task, f in zip(("a", "b"), flips):
            rows.append({"run": run, "task": task, "avg_bits": bits, "params_kept": 1.0, "flips": f,
                         "flips_ci_low": f / 2, "flips_ci_high": f * 2, "delta_acc": -f, "delta_acc_ci_low": -2 * f,
                         "delta_acc_ci_high": f})
    return roster, pd.DataFrame(rows)


def test_decision_rows_name_each_members_worst_task_with_its_interval():
    roster, table = _tables()
    out = sweep.decision_table(roster, table).set_index("member")
    assert out.loc["0-rtn-w2", "worst flips"] == "b: 50.0% [25.0, 100.0]"
    assert out.loc["0-rtn-w2", "worst Δacc"] == "b: -50.0 pp [-100.0, +50.0]"
    assert out.loc["1-rtn-w4", ["gate", "avg bits"]].tolist() == ["PASS", "4.13"]
    assert out.loc["3-gptq-w3", "gate"] == "failed" and pd.isna(out.loc["3-gptq-w3", "worst flips"])


def test_cheapest_passing_member_is_the_one_with_fewest_average_bits():
    roster, table = _tables()
    assert sweep.cheapest_passing(roster, table) == "1-rtn-w4 (4.13 average bits)"
    roster["gate"] = ["FAIL", "FAIL", "FAIL", ""]
    assert sweep.cheapest_passing(roster, table) is None
    pruned = table.assign(avg_bits=np.nan, params_kept=[0.5, 0.5, 0.7, 0.7, 0.9, 0.9])
    roster["gate"] = ["PASS", "PASS", "FAIL", ""]
    assert sweep.cheapest_passing(roster, pruned) == "0-rtn-w2 (50.0% of parameters kept)"


def test_size_saved_is_shown_only_for_members_whose_two_sizes_are_known():
    roster, table = _tables()
    sizes = {"0-rtn-w2": (2_000_000_000, 300_000_000), "1-rtn-w4": (2_000_000_000, 550_000_000),
             "2-rtn-w8": (np.nan, 1_050_000_000)}  # a member from an engine that loaded no baseline here
    table["baseline_bytes"] = [sizes[r][0] for r in table["run"]]
    table["model_bytes"] = [sizes[r][1] for r in table["run"]]
    out = sweep.decision_table(roster, table).set_index("member")["size saved"]
    assert out["0-rtn-w2"] == "1.7 GB saved, 6.67× smaller"  # 2 GB - 0.3 GB; 2 / 0.3
    assert out["1-rtn-w4"] == "1.45 GB saved, 3.64× smaller"  # 2 / 0.55 = 3.636
    assert out["2-rtn-w8"] == ""
    # members without the columns (runs made before sizes were recorded) show none either
    assert set(sweep.decision_table(*_tables())["size saved"].dropna()) == {""}
