"""token_kl(): teacher-forced token-level KL between two tiny random Llama models, against a per-token loop;
from a stored full reference (exact) and from a top-k one (an interval around the same exact values)."""

import numpy as np
import pytest

import torch  # hard dependencies: their absence must fail these tests, not skip them
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from flipbench.tokenkl import TOKEN_COLUMNS, answer_logprobs, bytes_per_token, reference_bytes, token_kl

CORPUS = ["question : what is two plus two ? answer : four",
          "question : how many legs has a cat ? answer : four legs",
          "the cat sat on the mat and the dog sat on the log",
          "one two three four five six seven eight nine ten"]
PROMPTS = ["question : what is two plus two ? answer :", "the cat sat on the", "one two three",
           "question : how many legs has a cat ? answer :", "the dog"]
ANSWERS = [" four", " mat and the dog sat on the log", " four five six seven", "", " sat"]


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def tiny_llama(seed: int, vocab_size: int):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def llamas(tokenizer):
    return tiny_llama(0, len(tokenizer)), tiny_llama(1, len(tokenizer))


def per_token_reference(model_b, model_c, tokenizer, prompt, answer):
    """One unpadded forward per answer token, KL in float64: independent of batching and gathering."""
    ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    kls, same = [], []
    with torch.no_grad():
        for t in range(start, len(ids)):
            prefix = torch.tensor([ids[:t]])
            logits_b = model_b(prefix).logits[0, -1].double()
            logits_c = model_c(prefix).logits[0, -1].double()
            p, log_p, log_q = logits_b.softmax(-1), logits_b.log_softmax(-1), logits_c.log_softmax(-1)
            kls.append(float((p * (log_p - log_q)).sum()))
            same.append(float(logits_b.argmax() == logits_c.argmax()))
    if not kls:
        return np.nan, np.nan, 0
    return np.mean(kls), np.mean(same), len(kls)


def per_token_values(model_b, model_c, tokenizer, prompt, answer):
    """Per answer token (rows): exact KL, same top, baseline log-prob of the answer token; unpadded, float64."""
    ids = tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    out = []
    with torch.no_grad():
        for t in range(start, len(ids)):
            prefix = torch.tensor([ids[:t]])
            logits_b, logits_c = model_b(prefix).logits[0, -1].double(), model_c(prefix).logits[0, -1].double()
            log_p, log_q = logits_b.log_softmax(-1), logits_c.log_softmax(-1)
            out.append((float((log_p.exp() * (log_p - log_q)).sum()), float(logits_b.argmax() == logits_c.argmax()),
                        float(log_p[ids[t]])))
    return np.array(out).reshape(-1, 3)


def test_tokenizer_answers_follow_the_prompt(tokenizer):
    # sanity of the fixture: answers tokenize to known counts past the prompt
    counts = [len(tokenizer(p + a)["input_ids"]) - len(tokenizer(p)["input_ids"]) for p, a in zip(PROMPTS, ANSWERS)]
    assert counts == [1, 8, 4, 0, 1]


def test_identical_models_give_zero_kl_and_full_agreement(llamas, tokenizer):
    base = llamas[0]
    out = token_kl(base, base, tokenizer, PROMPTS, ANSWERS, batch_size=2, device=torch.device("cpu"))
    scored = out["n_tokens"] > 0
    assert np.allclose(out.loc[scored, "kl"], 0.0, atol=1e-6)
    assert (out.loc[scored, "same_top"] == 1.0).all()


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_matches_per_token_loop(llamas, tokenizer, batch_size):
    out = token_kl(*llamas, tokenizer, PROMPTS, ANSWERS, batch_size=batch_size)
    assert list(out.columns) == ["kl", "same_top", "n_tokens", *TOKEN_COLUMNS]
    for i, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS)):
        kl, same, n = per_token_reference(*llamas, tokenizer, prompt, answer)
        assert out["n_tokens"][i] == n
        if n == 0:
            assert np.isnan(out["kl"][i]) and np.isnan(out["same_top"][i])
        else:
            assert out["kl"][i] == pytest.approx(kl, rel=1e-4, abs=1e-6)
            assert out["same_top"][i] == pytest.approx(same)
    assert (out["kl"].dropna() > 0).all()  # different random models do differ


def test_input_checks(llamas, tokenizer):
    with pytest.raises(ValueError, match="answers"):
        token_kl(*llamas, tokenizer, ["a"], [], batch_size=1)
    assert token_kl(*llamas, tokenizer, [], []).empty


def test_vocabulary_mismatch_is_an_error(llamas, tokenizer):
    bigger = tiny_llama(2, len(tokenizer) + 8)
    with pytest.raises(ValueError, match="vocabulary"):
        token_kl(llamas[0], bigger, tokenizer, PROMPTS[:1], ANSWERS[:1])


@pytest.mark.parametrize("batch_size", [1, 3])
def test_stored_baseline_logprobs_match_the_per_token_loop(llamas, tokenizer, batch_size):
    stored = answer_logprobs(llamas[0], tokenizer, PROMPTS, ANSWERS, batch_size=batch_size)
    assert [len(t.target) for t in stored] == [1, 8, 4, 0, 1]  # answer tokens per row, as counted by the fixture test
    assert all(t.logp.shape[1] == len(tokenizer) and t.ids is None for t in stored)
    # per token: V fp32 log-probs + the answer token's log-prob + the tail's (fp32 each)
    assert reference_bytes(tokenizer, PROMPTS, ANSWERS, len(tokenizer)) == 14 * (len(tokenizer) * 4 + 8)
    out = token_kl(stored, llamas[1], tokenizer, PROMPTS, ANSWERS, batch_size=2)
    for i, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS)):
        kl, same, n = per_token_reference(*llamas, tokenizer, prompt, answer)
        assert out["n_tokens"][i] == n
        if n:
            assert out["kl"][i] == pytest.approx(kl, rel=1e-4, abs=1e-6)
            assert out["same_top"][i] == pytest.approx(same)


def test_stored_logprobs_for_other_answers_are_refused(llamas, tokenizer):
    stored = answer_logprobs(llamas[0], tokenizer, PROMPTS, ANSWERS)
    with pytest.raises(ValueError, match="other answers"):
        token_kl(stored, llamas[1], tokenizer, PROMPTS, [" four"] * len(PROMPTS))
    with pytest.raises(ValueError, match="cover 4 rows"):
        token_kl(stored[:4], llamas[1], tokenizer, PROMPTS, ANSWERS)


def test_top_k_reference_brackets_the_exact_token_kl(llamas, tokenizer):
    V = len(tokenizer)
    k = 3
    stored = answer_logprobs(llamas[0], tokenizer, PROMPTS, ANSWERS, batch_size=2, topk=k)
    assert all(t.logp.shape[1] == k and t.ids.shape[1] == k and t.ids.dtype == torch.int32 for t in stored)
    assert bytes_per_token(V, k) == k * 8 + 8
    assert reference_bytes(tokenizer, PROMPTS, ANSWERS, V, k) == 14 * (k * 8 + 8)
    out = token_kl(stored, llamas[1], tokenizer, PROMPTS, ANSWERS, batch_size=3)
    widths = []
    for i, (prompt, answer) in enumerate(zip(PROMPTS, ANSWERS)):
        truth = per_token_values(*llamas, tokenizer, prompt, answer)
        assert out["n_tokens"][i] == len(truth)
        lower, upper = np.array(out["tok_kl"][i]), np.array(out["tok_kl_upper"][i])
        assert (lower <= truth[:, 0] + 1e-6).all() and (truth[:, 0] <= upper + 1e-6).all()
        widths.extend(upper - lower)
        # the argmax and the answer token's own log-prob stay exact (the answer token need not be in the top-k)
        assert np.array_equal(out["tok_same_top"][i], truth[:, 1])
        assert np.allclose(out["tok_logp_base"][i], truth[:, 2], atol=1e-5)
    assert max(widths) > 1e-3  # random models: the tail matters, so the interval is not degenerate


@pytest.mark.parametrize("topk", [0, 16, 10_000])
def test_a_reference_of_at_least_half_the_vocabulary_is_the_exact_full_one(llamas, tokenizer, topk):
    V = len(tokenizer)
    assert 2 * 16 >= V  # the fixture's vocabulary is small: k = 16 already keeps all of it
    stored = answer_logprobs(llamas[0], tokenizer, PROMPTS, ANSWERS, topk=topk)
    assert all(t.ids is None for t in stored)
    assert reference_bytes(tokenizer, PROMPTS, ANSWERS, V, topk) == 14 * (V * 4 + 8)
    out = token_kl(stored, llamas[1], tokenizer, PROMPTS, ANSWERS)
    exact = token_kl(llamas[0], llamas[1], tokenizer, PROMPTS, ANSWERS)
    for name in TOKEN_COLUMNS:
        assert out[name].tolist() == exact[name].tolist()
    assert out["tok_kl"].tolist() == out["tok_kl_upper"].tolist()
