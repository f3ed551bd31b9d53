"""Token KL through an engine's prompt log-probs (flipbench.engines.logprobs), on the completions server inside the
tests: the baseline's top-k reference equals flipbench.tokenkl's from the model itself, the compressed side scored
with its full vocabulary gives tokenkl's exact top-k bounds, and with only its top-k' the bounds still hold the
exact KL between them. Also the partial bounds on one hand-computed token."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("tenacity", reason="engine=server needs lm-eval's API extras: pip install -e '.[server]'")

from flipbench import engines, tokenkl  # noqa: E402
from flipbench.engines.logprobs import partial_bounds  # noqa: E402
from tests import engine_runs as er  # noqa: E402
from tests.completions_server import serve  # noqa: E402


def test_partial_bounds_on_one_hand_computed_token():
    # p over 4 tokens; the reference keeps p's top-1 (token 0) and the answer token 1; the engine returns q's top-1
    # (token 0) and q at the answer token. A = {0, 1}: head = .5 ln(.5/.45) + .3 ln(.3/.35) = 0.006432;
    # P_R = Q_R = 0.2, so the lumped rest adds 0. Exact KL = head + .15 ln(.15/.1) + .05 ln(.05/.1) = 0.032593.
    p = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    q = torch.tensor([0.45, 0.35, 0.1, 0.1]).log()
    ref = tokenkl.Reference(p[None, :1], torch.tensor([[0]], dtype=torch.int32), p[None, 1], torch.tensor([math.log(0.5)]))
    lower, upper = partial_bounds(ref, q[None, :1], torch.tensor([[0]], dtype=torch.int32), q[None, 1], torch.tensor([1]))
    assert lower.item() == pytest.approx(0.006432, abs=2e-5)
    assert lower.item() <= 0.032593 and math.isinf(upper.item())
    # with q known wherever p is (a full top-k of p covering all mass), the bounds close on the exact KL
    full = tokenkl.Reference(p[None, :4], torch.tensor([[0, 1, 2, 3]], dtype=torch.int32), p[None, 1], torch.tensor([-math.inf]))
    lower, upper = partial_bounds(full, q[None, :], torch.tensor([[0, 1, 2, 3]], dtype=torch.int32), q[None, 1], torch.tensor([1]))
    assert lower.item() == pytest.approx(0.032593, abs=2e-5) and upper.item() == pytest.approx(lower.item())


@pytest.fixture(scope="module")
def gen_rows():
    """The bundled model, its 2-bit RTN copy, and generative prompts with the baseline's own greedy answers."""
    s = er.setup(er.tiny_overrides(limit=6, extra=("suite.tasks=[synth_gsm8k]",)))
    base = er.load(s)
    frame = er.side(engines.build_lm(s.cfg, model=base, tokenizer=s.tokenizer, batch_size=4), s)
    gen = frame[frame["output_type"] == "generate_until"].drop_duplicates(["task", "doc_id"])
    comp = er.load(s)
    er.rtn(comp, s, bits=2)
    return s, base, comp, gen["prompt"].tolist(), gen["response"].tolist()


def server_lm(s, url):
    cfg = replace(s.cfg, engine=replace(s.cfg.engine, name="server", base_url=url))
    return engines.build_lm(cfg, tokenizer=s.tokenizer, batch_size=1)


def test_reference_and_full_vocabulary_kl_through_the_engine_equal_tokenkl_s(gen_rows):
    s, base, comp, prompts, answers = gen_rows
    k = 8
    expected_refs = tokenkl.reference_logprobs(base, s.tokenizer, prompts, answers, topk=k, scopes=tokenkl.SCOPES)
    expected_ref = expected_refs["answer"]
    with serve(base, s.tokenizer, "bundled:tiny") as (url, _):  # the prompt's positions come in the same requests
        refs = engines.references(server_lm(s, url), s.tokenizer, prompts, answers, k, tokenkl.SCOPES)
    ref = refs["answer"]
    assert [len(r.target) for r in ref] == [len(r.target) for r in expected_ref] and sum(len(r.target) for r in ref) > 0
    for scope in tokenkl.SCOPES:
        for got, want in zip(refs[scope], expected_refs[scope]):
            assert torch.equal(got.ids, want.ids)
            torch.testing.assert_close(got.logp, want.logp, atol=1e-4, rtol=0)
            torch.testing.assert_close(got.target, want.target, atol=1e-4, rtol=0)
            torch.testing.assert_close(got.log_tail.exp(), want.log_tail.exp(), atol=1e-5, rtol=0)
    expected = tokenkl.token_kl(expected_ref, comp, s.tokenizer, prompts, answers, prefill=expected_refs["prefill"])
    with serve(comp, s.tokenizer, "bundled:tiny") as (url, _):
        lm = server_lm(s, url)
        full = engines.token_kl(ref, lm, s.tokenizer, prompts, answers, prefill=refs["prefill"])
        top = engines.token_kl(ref, lm, s.tokenizer, prompts, answers, topk=k)
    np.testing.assert_allclose(full["kl"], expected["kl"], atol=1e-4)
    # prefill through the engine: the prompt's tokens scored as tokenkl scores them from the model
    assert (full["prefill_n_tokens"] > 0).all()
    for column in ("prefill_n_tokens", "prefill_top1", "prefill_top5"):
        np.testing.assert_allclose(full[column], expected[column], err_msg=column)
    np.testing.assert_allclose(full["prefill_kl"], expected["prefill_kl"], atol=1e-4)
    np.testing.assert_allclose(full["same_top"], expected["same_top"])
    for a, b in zip(full["tok_kl_upper"], expected["tok_kl_upper"]):
        np.testing.assert_allclose(a, b, atol=1e-3)
    # the compressed side's top-k only: a looser lower bound, no finite upper one where p's mass leaves A
    exact = tokenkl.token_kl(base, comp, s.tokenizer, prompts, answers)  # both models, full vocabulary
    for low, high, kl in zip(top["tok_kl"], top["tok_kl_upper"], exact["tok_kl"]):
        assert (np.array(low) <= np.array(kl) + 1e-4).all() and (np.array(kl) <= np.array(high) + 1e-4).all()
    assert np.nanmean(top["kl"]) > 0 and np.nanmean(top["kl"]) <= np.nanmean(full["kl"]) + 1e-4
    np.testing.assert_allclose(top["same_top"], expected["same_top"])


def test_hf_engine_token_kl_is_tokenkl_s(gen_rows):
    s, base, comp, prompts, answers = gen_rows
    base_lm = engines.build_lm(s.cfg, model=base, tokenizer=s.tokenizer, batch_size=4)
    comp_lm = engines.build_lm(s.cfg, model=comp, tokenizer=s.tokenizer, batch_size=4)
    ref = engines.answer_reference(base_lm, s.tokenizer, prompts, answers, topk=8)
    got = engines.token_kl(ref, comp_lm, s.tokenizer, prompts, answers)
    want = tokenkl.token_kl(tokenkl.answer_logprobs(base, s.tokenizer, prompts, answers, topk=8), comp, s.tokenizer,
                            prompts, answers)
    np.testing.assert_allclose(got["kl"], want["kl"])
