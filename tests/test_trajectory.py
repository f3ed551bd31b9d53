"""Where two greedy generations part (flipbench.trajectory) and token agreement on the baseline's answer
(flipbench.tokenkl / klstats): a hand-built pair of generations pins every number; agreement statistics are
checked against a direct computation from full distributions; a run on the random Llama pins S(0) = 100%
and a survival curve that never rises."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from flipbench import klstats, metrics, trajectory
from flipbench.tokenkl import answer_logprobs, token_kl
from tests.metrics.tables import gen_row, table


class WordTokenizer:
    """One token per whitespace-separated word (ids by first appearance): the answer tokens are the words."""

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]}


# (base response, comp response, correct base, correct comp); prompt "Q<doc>", budget 6 tokens
PAIRS = [(" a b c d", " a b c d", 1, 1),  # identical
         (" a b c d", " a b x", 1, 0),  # parts at token 2
         (" a", " a b c d e f", 0, 0),  # the baseline's answer is a prefix of the other: parts at token 1
         (" x y z w v u", " q", 0, 1)]  # parts at token 0; the baseline used its whole budget


def hand_table() -> pd.DataFrame:
    rows = []
    for doc, (b, c, ok_b, ok_c) in enumerate(PAIRS):
        row = gen_row(doc, "T", "T" if ok_b else "F", "T" if ok_c else "F")
        row.update(response_base=b, response_comp=c)
        rows.append(row)
    frame = table(rows)
    trajectory.annotate(frame, WordTokenizer(), {"gen": 6})
    return frame


def test_hand_built_pairs_pin_every_per_doc_number():
    frame = hand_table()
    expected = {
        "gen_identical": [1, 0, 0, 0],
        "first_div_token": [np.nan, 2, 1, 0],
        "prefix_share": [1, 2 / 4, 1 / 6, 0],
        "gen_len_base": [4, 4, 1, 6], "gen_len_comp": [4, 3, 6, 1],
        "len_ratio": [1, 3 / 4, 6, 1 / 6],
        "max_gen_toks": [6, 6, 6, 6],
        "trunc_base": [0, 0, 0, 1], "trunc_comp": [0, 0, 1, 0],
    }
    for column, values in expected.items():
        np.testing.assert_allclose(frame[column].to_numpy(dtype=float), values, err_msg=column)


def test_hand_built_pairs_pin_survival_and_the_summary():
    frame = hand_table()
    np.testing.assert_allclose(trajectory.survival(frame, [0, 1, 2, 3, 4, 1000]), [1, 0.75, 0.5, 0.25, 0.25, 0.25])
    record = trajectory.summary_record(frame)
    assert record == pytest.approx({
        "gen_identical": 0.25, "first_div_median": 1.0, "prefix_share_mean": (1 + 0.5 + 1 / 6 + 0) / 4,
        "len_ratio_median": (3 / 4 + 1) / 2, "trunc_base": 0.25, "trunc_comp": 0.25,
        "div_at_1": 0.25, "div_at_8": 0.75, "div_at_32": 0.75, "div_at_128": 0.75})
    summary = metrics.summarize(frame, n_resamples=0)
    head = summary.iloc[0]
    for column, value in record.items():
        assert head[column] == pytest.approx(value), column
    # no token lists in the hand table: the agreement columns are NaN, not invented
    assert all(np.isnan(head[c]) for c in klstats.AGREEMENT_COLUMNS)


def test_unknown_budget_leaves_truncation_nan_and_mc_rows_untouched():
    rows = [gen_row(0, "T", "T", "T")]
    rows[0].update(response_base=" a b", response_comp=" a b")
    frame = table(rows)
    trajectory.annotate(frame, WordTokenizer(), None)
    assert frame["gen_identical"].iloc[0] == 1 and np.isnan(frame["trunc_base"].iloc[0])
    assert trajectory.summary_record(frame)["trunc_base"] != trajectory.summary_record(frame)["trunc_base"]  # NaN


def test_earliest_divergences_and_the_split_at_the_first_difference():
    frame = hand_table()
    flips = trajectory.earliest_divergences(frame)
    assert flips["doc_id"].tolist() == [3, 1]  # flips only (docs 1 and 3), earliest divergence first
    assert trajectory.split_at_divergence(flips.iloc[1]) == (" a b ", "c d", "x")


def test_report_section_escapes_the_continuations(tmp_path):
    from flipbench import report

    frame = hand_table()
    frame.loc[frame["doc_id"] == 1, "response_comp"] = " a b <script>alert(1)</script>"
    parts = report.sections(metrics.summarize(frame, n_resamples=0), frame)
    headings = [h for h, _ in parts]
    assert "Where answers diverge" in headings
    table_part = parts[headings.index("Where answers diverge") + 1][1]
    assert table_part["first divergent token"].tolist() == ["0", "2"]
    report.write_html(tmp_path / "r.html", "t", [], parts, [])
    text = (tmp_path / "r.html").read_text()
    assert "<script>" not in text and "&lt;script&gt;" in text


# ---- token agreement, against full distributions

CORPUS = ["question : what is two plus two ? answer : four", "the cat sat on the mat and the dog sat on the log",
          "one two three four five six seven eight nine ten"]
PROMPTS = ["question : what is two plus two ? answer :", "the cat sat on the", "one two three"]
ANSWERS = [" four", " mat and the dog sat on the log", " four five six seven"]


@pytest.fixture(scope="module")
def word_level():
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def _llama(seed: int, vocab: int):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def _direct(model_b, model_c, tokenizer) -> dict[str, list[np.ndarray]]:
    """Per answer token, from both full distributions in float64: top-1, top-5 overlap, KL(c||b), JS distance."""
    out = {"top1": [], "top5": [], "rev": [], "js": []}
    for prompt, answer in zip(PROMPTS, ANSWERS):
        ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
        start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            lb = model_b(torch.tensor([ids])).logits[0].double().log_softmax(-1)[start - 1:len(ids) - 1]
            lc = model_c(torch.tensor([ids])).logits[0].double().log_softmax(-1)[start - 1:len(ids) - 1]
        pb, pc = lb.exp(), lc.exp()
        m = (pb + pc) / 2
        jsd = 0.5 * (pb * (pb / m).log()).sum(-1) + 0.5 * (pc * (pc / m).log()).sum(-1)
        out["top1"].append((lb.argmax(-1) == lc.argmax(-1)).double().numpy())
        top_b, top_c = lb.topk(5, -1).indices, lc.topk(5, -1).indices
        out["top5"].append(np.array([len(set(b.tolist()) & set(c.tolist())) / 5 for b, c in zip(top_b, top_c)]))
        out["rev"].append((pc * (lc - lb)).sum(-1).numpy())
        out["js"].append(np.sqrt(jsd.numpy() / math.log(2)))
    return out


def test_token_agreement_matches_a_direct_computation(word_level):
    model_b, model_c = _llama(0, len(word_level)), _llama(1, len(word_level))
    direct = _direct(model_b, model_c, word_level)
    stats = token_kl(model_b, model_c, word_level, PROMPTS, ANSWERS, batch_size=2)
    for name, column in (("top1", "tok_same_top"), ("top5", "tok_top5_overlap"), ("rev", "tok_kl_rev"),
                         ("js", "tok_js")):
        for row, expected in enumerate(direct[name]):
            np.testing.assert_allclose(stats[column].iloc[row], expected, rtol=1e-4, atol=1e-6, err_msg=column)
    # the summary's token-weighted means and doc-clustered SEs
    record = klstats.agreement_stats(stats)
    from flipbench.stats import clustered_mean_and_se

    docs = np.concatenate([np.full(len(v), i) for i, v in enumerate(direct["rev"])])
    for name, key in (("kl_reverse_mean", "rev"), ("js_mean", "js"), ("top5_overlap", "top5"), ("top1_agree", "top1")):
        mean, se = clustered_mean_and_se(np.concatenate(direct[key]), docs)
        assert record[name] == pytest.approx(mean, rel=1e-4, abs=1e-7)
        assert record[f"{name}_se"] == pytest.approx(se, rel=1e-3, abs=1e-7)
    # from a full stored reference: the same numbers
    stored = token_kl(answer_logprobs(model_b, word_level, PROMPTS, ANSWERS), model_c, word_level, PROMPTS, ANSWERS)
    for column in ("tok_top5_overlap", "tok_kl_rev", "tok_js"):
        for a, b in zip(stored[column], stats[column]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # another batching: fp32 noise


def test_a_top_k_reference_keeps_top1_and_top5_exact_and_bounds_reverse_kl_and_js(word_level):
    model_b, model_c = _llama(0, len(word_level)), _llama(1, len(word_level))
    exact = token_kl(model_b, model_c, word_level, PROMPTS, ANSWERS)
    for k, top5_known in ((8, True), (3, False)):
        ref = answer_logprobs(model_b, word_level, PROMPTS, ANSWERS, topk=k)
        assert ref[0].ids is not None
        approx = token_kl(ref, model_c, word_level, PROMPTS, ANSWERS)
        for row in range(len(PROMPTS)):
            np.testing.assert_array_equal(approx["tok_same_top"].iloc[row], exact["tok_same_top"].iloc[row])
            if top5_known:
                np.testing.assert_allclose(approx["tok_top5_overlap"].iloc[row], exact["tok_top5_overlap"].iloc[row])
            else:
                assert np.isnan(approx["tok_top5_overlap"].iloc[row]).all()
            for column in ("tok_kl_rev", "tok_js"):
                low, true = np.asarray(approx[column].iloc[row]), np.asarray(exact[column].iloc[row])
                assert (low <= true + 1e-6).all() and (low >= -1e-9).all(), column


# ---- a run on the random Llama

def test_random_llama_run_survival_starts_at_100_percent_and_never_rises(random_llama, mini_tasks, tmp_path):
    from tests.conftest import compose, mini_overrides
    from flipbench import pipeline

    overrides = mini_overrides(random_llama, mini_tasks, tmp_path / "results")
    # "gre": a string the random Llama writes in some generations (tests/test_chat.py), as a reasoning marker
    run_dir = pipeline.run(compose(overrides + ["compression=rtn", "compression.bits=2", "eval.bootstrap=0",
                                                "suite.think_end=gre"]))
    samples = pd.read_parquet(run_dir / "samples.parquet")
    gen = samples[samples["output_type"] == "generate_until"]
    assert gen["gen_identical"].notna().all() and gen["max_gen_toks"].notna().all()
    assert samples.loc[samples["output_type"] != "generate_until", "gen_identical"].isna().all()
    diverged = gen["gen_identical"] == 0
    assert gen.loc[diverged, "first_div_token"].notna().all() and gen.loc[~diverged, "first_div_token"].isna().all()
    docs = gen.drop_duplicates(["task", "group", "doc_id"])
    curve = trajectory.survival(docs, np.arange(0, int(docs[["gen_len_base", "gen_len_comp"]].max().max()) + 2))
    assert curve[0] == 1.0 and (np.diff(curve) <= 0).all()
    summary = pd.read_csv(run_dir / "summary.csv")
    head = summary[(summary["task"] == "mini_gen") & summary["headline"] & (summary["group"] == "all")].iloc[0]
    for column in ("gen_identical", "len_ratio_median", "top1_agree", "top5_overlap", "kl_reverse_mean", "js_mean"):
        assert np.isfinite(head[column]), column
    assert head["top1_agree"] == pytest.approx(head["same_top"])
    assert (run_dir / "plots" / "survival.png").is_file()
    report = (run_dir / "report.md").read_text()
    assert "Where answers diverge" in report
    # the reasoning span per doc and side, summarised per task and stated in the report
    assert gen[["think_closed_base", "think_closed_comp"]].notna().all().all()
    assert head["think_unclosed_base"] == pytest.approx(1 - docs["think_closed_base"].mean())
    assert "Reasoning span (tokens before suite.think_end" in report
    # prefill: the prompt's tokens scored apart from the answer's, from the baseline's reference
    assert head["prefill_tokens"] > head["n_tokens"] > 0 and np.isfinite(head["prefill_kl_mean"])
    assert 0 <= head["prefill_top1_agree"] <= 1 and "Prefill against answer" in report


def test_without_a_tokenizer_only_string_identity_is_filled():
    frame = table([gen_row(0, "T", "T", "T"), gen_row(1, "T", "T", "F")])
    trajectory.annotate(frame, None, {"gen": 6})
    assert frame["gen_identical"].tolist() == [1.0, 0.0]
    assert frame[[c for c in trajectory.DOC_COLUMNS if c != "gen_identical"]].isna().all().all()
    record = trajectory.summary_record(frame)
    assert record["gen_identical"] == 0.5 and np.isnan(record["div_at_1"]) and np.isnan(record["first_div_median"])
    assert np.isnan(trajectory.survival(frame, [0])).all()


# ---- the reasoning span (suite.think_end), by hand

# (base raw, comp raw) with marker "</t>", budget 6 tokens, stop "\n"; lengths worked out by hand below
THINK = [("a b c </t> 4", "a b c d e f </t> 4"),  # 3 and 6 tokens before the marker
         ("x </t> 5", "x y z"),  # comp: no marker, 3 tokens, stopped
         ("p q </t> r </t> 7", "p q r s t u v"),  # base: the last marker counts (4 tokens); comp: cut at the budget
         ("</t> 8", "</t> 8"),  # empty spans: 0 and 0
         ("m n o\nz z z z z", "k </t> 1")]  # base: stopped at "\n" after 3 tokens (the rest is not the model's)


def think_table() -> pd.DataFrame:
    frame = table(gen_row(doc, "T", "T", "T") for doc in range(len(THINK)))
    for side, position in (("base", 0), ("comp", 1)):
        values = [trajectory.think_values(pair[position], "</t>", WordTokenizer(), 6, ["\n"]) for pair in THINK]
        for column in trajectory.THINK_DOC:
            frame[f"{column}_{side}"] = [v[column] for v in values]
    return frame


def test_hand_built_reasoning_spans_pin_every_number():
    frame = think_table()
    nan = np.nan
    expected = {"think_len_base": [3, 1, 4, 0, nan], "think_len_comp": [6, nan, nan, 0, 1],
                "think_closed_base": [1, 1, 1, 1, 0], "think_closed_comp": [1, 0, 0, 1, 1],
                "think_cut_base": [0, 0, 0, 0, 0], "think_cut_comp": [0, 0, 1, 0, 0]}
    for column, values in expected.items():
        np.testing.assert_allclose(frame[column].to_numpy(dtype=float), values, err_msg=column)
    # base medians over closed spans: (0, 1, 3, 4) -> 2; comp (0, 1, 6) -> 1; ratios where both closed: 6/3, 0/0 := 1
    record = trajectory.think_record(frame)
    assert record == pytest.approx({"think_len_median_base": 2.0, "think_len_median_comp": 1.0,
                                    "think_len_ratio_median": 1.5, "think_unclosed_base": 0.2,
                                    "think_unclosed_comp": 0.4, "think_cut_base": 0.0, "think_cut_comp": 0.2})
    head = metrics.summarize(frame, n_resamples=0).iloc[0]
    for column, value in record.items():
        assert head[column] == pytest.approx(value), column
    from flipbench import report

    text = report.think_text(metrics.summarize(frame, n_resamples=0))
    assert "median 2 tokens baseline, 1 compressed (comp/base ratio, median 1.50)" in text
    assert "span not closed 20% / 40%, of which cut at max_gen_toks 0% / 20%" in text
    # no marker set: every think column NaN, and no report line
    plain = metrics.summarize(hand_table(), n_resamples=0)
    assert plain[list(trajectory.THINK_SUMMARY)].isna().all().all() and report.think_text(plain) is None


def test_think_columns_land_on_every_filter_row_of_their_doc_and_survive_pairing():
    from flipbench.pairing import pair

    rows = [{"task": "grp", "group": "sub", "doc_id": 0, "filter": f, "output_type": "generate_until"}
            for f in ("strict", "flex")] + [{"task": "mc", "group": "mc", "doc_id": 0, "filter": "none",
                                             "output_type": "multiple_choice"}]
    frame = pd.DataFrame(rows)
    # leaf grp_sub is reported as task grp, group sub; the MC leaf generated nothing
    trajectory.annotate_think(frame, {("grp_sub", 0): ("a b </t> c", ["\n"])}, "</t>", WordTokenizer(), {"grp": 6},
                              {"grp_sub": "grp", "mc": "mc"})
    assert frame["think_len"].tolist()[:2] == [2.0, 2.0] and np.isnan(frame["think_len"].iloc[2])
    side = frame.assign(doc_hash="d", prompt_hash="p", **{c: "" for c in ("category", "metric", "prompt", "target",
                                                                           "ll", "ll_uncond", "pred", "correct",
                                                                           "lm_correct", "response", "choices",
                                                                           "choice_len")})
    paired = pair(side, side.drop(columns=list(trajectory.THINK_DOC)))  # the other side has no marker columns
    assert paired["think_len_base"].tolist()[:2] == [2.0, 2.0] and paired["think_len_comp"].isna().all()


# ---- prefill: the prompt's own tokens, apart from the answer's

def _direct_prefill(model_b, model_c, tokenizer) -> list[dict[str, np.ndarray]]:
    """Per doc, at every prompt token but the first (plain forward of each model on the prompt alone, float64):
    KL(b || c), top-1 agreement and top-5 overlap."""
    out = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            lb = model_b(torch.tensor([ids])).logits[0].double().log_softmax(-1)[:-1]  # predicts tokens 1..n-1
            lc = model_c(torch.tensor([ids])).logits[0].double().log_softmax(-1)[:-1]
        top_b, top_c = lb.topk(5, -1).indices, lc.topk(5, -1).indices
        out.append({"kl": (lb.exp() * (lb - lc)).sum(-1).numpy(),
                    "top1": (lb.argmax(-1) == lc.argmax(-1)).double().numpy(),
                    "top5": np.array([len(set(b.tolist()) & set(c.tolist())) / 5 for b, c in zip(top_b, top_c)])})
    return out


def test_prefill_kl_and_agreement_match_a_plain_forward_of_both_models(word_level):
    from flipbench.stats import clustered_mean_and_se
    from flipbench.tokenkl import reference_logprobs

    model_b, model_c = _llama(0, len(word_level)), _llama(1, len(word_level))
    direct = _direct_prefill(model_b, model_c, word_level)
    stats = token_kl(model_b, model_c, word_level, PROMPTS, ANSWERS, batch_size=2, prefill=model_b)
    for row, want in enumerate(direct):
        assert stats["prefill_n_tokens"].iloc[row] == len(want["kl"])  # prompt words 10, 5, 3, less the first
        for column, key in (("prefill_kl", "kl"), ("prefill_kl_upper", "kl"), ("prefill_top1", "top1"),
                            ("prefill_top5", "top5")):
            assert stats[column].iloc[row] == pytest.approx(want[key].mean(), rel=1e-4, abs=1e-6), column
    # the answer's columns do not move when the prompt is scored too
    alone = token_kl(model_b, model_c, word_level, PROMPTS, ANSWERS)
    np.testing.assert_allclose(stats["kl"], alone["kl"], rtol=1e-5)
    # the summary: token-weighted over the prompts' tokens, SE clustered by doc, apart from the answer's
    record = klstats.prefill_stats(stats)
    kl = np.concatenate([d["kl"] for d in direct])
    docs = np.concatenate([np.full(len(d["kl"]), i) for i, d in enumerate(direct)])
    mean, se = clustered_mean_and_se(kl, docs)
    assert record["prefill_tokens"] == len(kl) == 9 + 4 + 2
    assert record["prefill_kl_mean"] == pytest.approx(mean, rel=1e-4) and record["prefill_kl_se"] == pytest.approx(se, rel=1e-3)
    top1 = np.concatenate([d["top1"] for d in direct])
    assert record["prefill_top1_agree"] == pytest.approx(top1.mean())
    # from the baseline's top-k reference over the prompt: top-1 exact, KL between its bounds
    ref = reference_logprobs(model_b, word_level, PROMPTS, ANSWERS, topk=4, scopes=("answer", "prefill"))
    bounded = token_kl(ref["answer"], model_c, word_level, PROMPTS, ANSWERS, prefill=ref["prefill"])
    np.testing.assert_allclose(bounded["prefill_top1"], stats["prefill_top1"])
    assert (bounded["prefill_kl"] <= stats["prefill_kl"] + 1e-6).all()
    assert (bounded["prefill_kl_upper"] >= stats["prefill_kl"] - 1e-6).all()
    assert bounded["prefill_top5"].isna().all()  # k = 4 < 5: not known
