"""Reports and plots rendered from a hand-made samples table: tables, escaping, gate verdicts."""

import json
import re

import pandas as pd
import pytest
from omegaconf import OmegaConf

from flipbench import report
from flipbench.config import FlipbenchConfig, GateConfig

HOSTILE = '<script>alert("x")</script>'


def fixture_samples() -> pd.DataFrame:
    """8 MC docs of task t (subjects s1, s2): 2 lost (docs 0, 1), 1 gained (doc 2), 5 unchanged."""
    rows = []
    for i in range(8):
        lost, gained = i in (0, 1), i == 2
        base_pred = 0 if i != 2 else 1
        comp_pred = 1 if lost else 0
        ll_b = [-0.2, -2.0] if base_pred == 0 else [-2.0, -0.2]
        ll_c = [-0.2, -2.0] if comp_pred == 0 else [-2.0, -0.2]
        rows.append(dict(
            task="t", group=f"s{i % 2 + 1}", doc_id=i, filter="none", output_type="multiple_choice", metric="acc",
            doc_hash=f"h{i}", prompt_hash=f"p{i}", prompt=f"Question {i} {HOSTILE}\nAnswer:", target="0",
            choices=[f"yes {HOSTILE}", "no"], choice_len=[len(f"yes {HOSTILE}"), 2], ll_base=ll_b, ll_comp=ll_c,
            pred_base=str(base_pred), pred_comp=str(comp_pred), correct_base=int(base_pred == 0),
            correct_comp=int(comp_pred == 0), response_base="", response_comp="", kl=float("nan"),
            same_top=float("nan"), n_tokens=float("nan"),
        ))
    return pd.DataFrame(rows)


def make_run(tmp_path, gate: GateConfig | None = None):
    from flipbench.metrics import annotate

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    annotate(fixture_samples()).to_parquet(run_dir / "samples.parquet", index=False)
    (run_dir / "manifest.json").write_text(json.dumps({"compression": {"method": "rtn", "avg_bits": 4.25}}))
    cfg = FlipbenchConfig()
    cfg.model.path, cfg.model.name = "x", "fixture"
    cfg.eval.bootstrap = 100
    cfg.suite.metrics = {"t": ["acc"]}
    cfg.gate = gate or GateConfig()
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    return run_dir, cfg


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """The fixture run's report with its plots, rendered once for the two tests that read it."""
    run_dir, cfg = make_run(tmp_path_factory.mktemp("full_report"))
    report.build(run_dir, cfg)
    return run_dir


def test_summary_and_markdown_table_hold_the_hand_counted_numbers(full_report):
    run_dir = full_report
    summary = pd.read_csv(run_dir / "summary.csv")
    whole = summary[(summary["group"] == "all")].iloc[0]
    # Baseline right on 7 of 8 (all but doc 2); compressed right on 6 (docs 2-7): lost 2, gained 1.
    assert (whole["acc_base"], whole["acc_comp"]) == (7 / 8, 6 / 8)
    assert (whole["lost"], whole["gained"], whole["flips"]) == (2 / 8, 1 / 8, 3 / 8)
    assert whole["avg_bits"] == 4.25 and whole["method"] == "rtn"
    assert set(summary["group"]) == {"all", "s1", "s2"}
    md = (run_dir / "report.md").read_text()
    # Δacc in percentage points; flips 3/8 with its exact interval (beta quantiles of 3 in 8: 0.0852, 0.7551)
    assert "| t | acc | none | 8 | 87.5% | 75.0% | -12.5 pp |" in md
    assert "| 37.5% | [8.5, 75.5] % |" in md
    assert "37.5% of answers flipped [8.5, 75.5] (lost 25.0%, gained 12.5%)" in md
    assert "KL(baseline ‖ compressed) in nats" in md
    for name in ("accuracy_vs_flips", "transitions", "kl_vs_flips", "flips_by_margin", "subjects_t"):
        assert (run_dir / "plots" / f"{name}.png").is_file() and (run_dir / "plots" / f"{name}.svg").is_file()


def test_html_is_self_contained_and_escapes_dataset_text(full_report):
    page = (full_report / "report.html").read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("data:image/png;base64,") == 5
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing external


@pytest.mark.parametrize("gate,verdict", [
    (GateConfig(), "not set"),
    (GateConfig(max_flips=0.5), "PASS"),
    (GateConfig(max_flips=0.3), "FAIL"),  # flips 0.375
    (GateConfig(max_acc_drop=0.125), "PASS"),  # drop exactly 0.125
    (GateConfig(max_lost=0.2), "FAIL"),  # lost 0.25
])
def test_gate_verdict_in_report(tmp_path, gate, verdict):
    run_dir, cfg = make_run(tmp_path, gate)
    cfg.output.plots = False  # the verdict does not depend on them
    assert report.build(run_dir, cfg)["verdict"] == verdict
    assert f"Release gate: {verdict}" in (run_dir / "report.md").read_text()


def test_rebuild_command_needs_a_run_directory(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    assert "has no samples.parquet" in capsys.readouterr().err


def test_gate_on_upper_ci_is_stated_and_checked(tmp_path):
    # flips 3/8 = 0.375 passes 0.5 at the point, but its exact upper bound 0.755 does not
    run_dir, cfg = make_run(tmp_path, GateConfig(max_flips=0.5, on="upper_ci"))
    cfg.output.plots = False
    verdict = report.build(run_dir, cfg)
    assert verdict["verdict"] == "FAIL" and verdict["on"] == "upper_ci"
    md = (run_dir / "report.md").read_text()
    assert "gate.on=upper_ci" in md and "t: flips 75.5% (flips_ci_high) exceeds the limit 50.0% (max_flips)" in md
    # the decision block comes first: verdict, then the failing check, before any table
    assert md.index("**Release gate: FAIL**") < md.index("exceeds the limit") < md.index("## Per task")


def test_most_damaging_flips_are_listed_per_kl_scope(tmp_path):
    from flipbench.metrics import annotate

    run_dir, cfg = make_run(tmp_path)
    gen = fixture_samples().iloc[:1].assign(task="g", group="g", doc_id=0, filter="strict-match", output_type="generate_until",
                                            metric="exact_match", target="4", choices=[[]], choice_len=[[]], ll_base=[[]],
                                            ll_comp=[[]], pred_base="4", pred_comp="5", correct_base=1, correct_comp=0,
                                            response_base="4", response_comp="5", kl=9.0, n_tokens=1.0)
    samples = pd.concat([fixture_samples(), gen], ignore_index=True)
    annotate(samples).to_parquet(run_dir / "samples.parquet", index=False)
    cfg.output.plots = False
    report.build(run_dir, cfg)
    md = (run_dir / "report.md").read_text()
    choice = md.index("Flips lost, choice-level KL")
    token = md.index("Flips lost, token-level KL")
    assert md.index("Flips gained, choice-level KL") < token  # lost and gained apart
    # the generative doc's KL of 9 nats is listed only under the token scope, never ranked above choice-level ones
    assert "| 9.0000 |" in md[token:] and "| 9.0000 |" not in md[choice:token]


def test_lost_flips_are_ranked_by_the_baseline_margin_on_the_gold_answer():
    """A confident right answer that is lost outranks a near-tie, whatever their KL; generations are shown as text."""
    rows = pd.DataFrame({
        "task": "t", "group": "t", "doc_id": [0, 1, 2], "output_type": "multiple_choice", "target": "0",
        "correct_base": [1, 1, 0], "correct_comp": [0, 0, 1],
        "p_base": [[0.51, 0.49], [0.95, 0.05], [0.2, 0.8]], "kl": [5.0, 0.1, 1.0]})
    lost = report.worst_flips(rows, "multiple_choice")
    assert lost["doc_id"].tolist() == [1, 0]  # margin 0.90 before 0.02, although doc 0's KL is 50x larger
    assert lost["gold_margin"].round(2).tolist() == [0.90, 0.02]
    gained = report.worst_flips(rows, "multiple_choice", direction="gained")
    assert gained["doc_id"].tolist() == [2] and gained["gold_margin"].round(2).tolist() == [-0.6]
    gen = pd.Series({"output_type": "generate_until", "pred_base": "2", "p_base": [], "choices": [],
                     "response_base": "1 + 1 = 2\n#### 2"})
    assert report._answer(gen, "base") == "1 + 1 = 2\n#### 2 → 2"


def llama_params_by_hand(config) -> tuple[int, int]:
    """(parameters outside the decoder linears, weights of the decoder linears) of the conftest random Llama:
    hidden 64, MLP 128, 2 layers, 4 heads of 16 and 2 KV heads (k, v project to 32), untied lm_head, no biases."""
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 128, 2)
    assert not config.tie_word_embeddings
    linear = 64 * 64 + 32 * 64 + 32 * 64 + 64 * 64 + 128 * 64 + 128 * 64 + 64 * 128  # q k v o gate up down: 36864
    other = 2 * config.vocab_size * 64 + 2 * 2 * 64 + 64  # embeddings, lm_head, two norms per layer, final norm
    return other, 2 * linear


def test_model_sizes_by_hand_on_a_tiny_model(random_llama):
    """The baseline's bytes (parameters at float32, and its safetensors file) and RTN-w2's packed bytes, counted by
    hand; the decision block's "saved" from them."""
    import struct

    import torch
    from transformers import AutoModelForCausalLM

    from flipbench import modelsize
    from flipbench.compress import QuantConfig, compress

    model = AutoModelForCausalLM.from_pretrained(random_llama, dtype=torch.float32)
    other, linear = llama_params_by_hand(model.config)
    assert modelsize.evaluated_bytes(model) == 4 * (other + linear)
    file = random_llama / "model.safetensors"
    header = struct.unpack("<Q", file.read_bytes()[:8])[0]  # safetensors: 8-byte header length, header, then the data
    assert modelsize.disk_bytes(str(random_llama)) == 8 + header + 4 * (other + linear)
    # RTN w2 per output channel: each row stores 2 bits a weight plus a 16-bit scale and a 2-bit zero; the 512 rows
    # of a layer hold 36864 weights, so 2 + 18 * 512 / 36864 = 2.25 bits a weight
    details = compress(model, QuantConfig(method="rtn", bits=2))
    assert details["avg_bits"] == 2.25
    assert details["model_bytes"] == 4 * other + linear * 2.25 / 8
    base = {"bytes": 4 * (other + linear), "dtype": "float32", "disk_bytes": 1}
    assert modelsize.compared(base, details) == (4 * (other + linear), 4 * other + linear * 9 // 32,
                                                 "parameters at float32 evaluated")


@pytest.mark.parametrize("compression,expected", [
    # in-process: against the baseline's parameters as evaluated
    ({"method": "rtn", "bits": 4, "avg_bits": 4.25, "model_bytes": 500_000_000},
     "; size 2 GB → 500 MB (1.5 GB saved, 4.00× smaller; parameters at bfloat16 evaluated)"),
    # a checkpoint: its files on disk against the baseline's files on disk
    ({"method": "checkpoint", "avg_bits": 16.0, "model_bytes": 1_200_000_000, "size_basis": "disk"},
     "; size 3 GB → 1.2 GB (1.8 GB saved, 2.50× smaller; weight files on disk)"),
    ({"method": "rtn", "bits": 4, "avg_bits": 4.25}, ""),  # compressed size unknown: no claim
])
def test_decision_block_shows_the_size_saved_only_where_both_sizes_are_known(compression, expected):
    cfg = FlipbenchConfig()
    cfg.model.path = "org/model"
    manifest = {"baseline_size": {"bytes": 2_000_000_000, "dtype": "bfloat16", "disk_bytes": 3_000_000_000}}
    line = next(l for l in report.headline_text(pd.DataFrame({"headline": [], "group": []}), {"verdict": "not set", "tasks": []}, cfg, manifest, compression)
                if l.startswith("- compressed:"))
    assert line.endswith(expected) and ("saved" in line) == bool(expected)
    assert "saved" not in "".join(report.headline_text(pd.DataFrame({"headline": [], "group": []}), {"verdict": "not set", "tasks": []}, cfg, {}, compression))
