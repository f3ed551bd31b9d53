"""engine=server against a completions server inside the test (tests/completions_server.py, 127.0.0.1), backed
by the same model: per doc the same answers and log-likelihoods as engine=hf, on both sides, and the same flips;
the preflight refuses an endpoint that does not answer or serves another model. Also the engine-independent bad
input of engine=vllm where vLLM is not installed."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

pytest.importorskip("tenacity", reason="engine=server needs lm-eval's API extras: pip install -e '.[server]'")

from flipbench import engines  # noqa: E402
from flipbench.config import ConfigError  # noqa: E402
from tests import engine_runs as er  # noqa: E402
from tests.completions_server import serve  # noqa: E402


def with_engine(cfg, **fields):
    return replace(cfg, engine=replace(cfg.engine, **fields))


@pytest.fixture(scope="module")
def tiny():
    """The bundled tiny model on its four synthetic tasks (three MC, one GSM8k-shaped), 6 docs each."""
    s = er.setup(er.tiny_overrides(limit=6))
    return s, er.load(s)


@pytest.fixture(scope="module")
def hf_sides(tiny):
    """engine=hf: the baseline, then its 2-bit RTN copy (a fresh load, quantized in place)."""
    s, model = tiny
    base = er.side(engines.build_lm(s.cfg, model=model, tokenizer=s.tokenizer, batch_size=4), s)
    comp_model = er.load(s)
    er.rtn(comp_model, s, bits=2)
    comp = er.side(engines.build_lm(s.cfg, model=comp_model, tokenizer=s.tokenizer, batch_size=4), s)
    return base, comp, comp_model


def served_side(s, model, **engine_fields):
    with serve(model, s.tokenizer, s.cfg.model.path) as (url, backend):
        cfg = with_engine(s.cfg, name="server", base_url=url + "/completions", **engine_fields)
        engines.check(cfg)
        frame = er.side(engines.build_lm(cfg, tokenizer=s.tokenizer, batch_size=4), replace(s, cfg=cfg))
        assert backend.requests > 0
    return frame


def test_server_gives_hf_s_answers_and_flips_on_both_sides(tiny, hf_sides):
    s, model = tiny
    base_hf, comp_hf, comp_model = hf_sides
    base_sv = served_side(s, model)
    comp_sv = served_side(s, comp_model, num_concurrent=2)  # lm-eval's async path too
    for hf, sv in ((base_hf, base_sv), (comp_hf, comp_sv)):
        agree = er.agreement(hf, sv)
        assert agree["answers"] == agree["correct"] == agree["rows"], agree
        assert agree["max_dll"] < 1e-4, agree
        assert set(sv["output_type"]) == {"multiple_choice", "generate_until"}
        gen = sv["output_type"] == "generate_until"
        assert (hf.loc[gen, "response"].to_numpy() == sv.loc[gen, "response"].to_numpy()).all()
    flips_hf, flips_sv = er.flips(base_hf, comp_hf), er.flips(base_sv, comp_sv)
    assert (flips_hf == flips_sv).all() and (flips_hf != 0).any()


def test_unreachable_endpoint_is_one_line_before_any_weight(tiny):
    s, _ = tiny
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = with_engine(s.cfg, name="server", base_url=f"http://127.0.0.1:{port}/v1/completions")
    with pytest.raises(ConfigError, match="unreachable") as err:
        engines.check(cfg)
    assert "\n" not in str(err.value) and f":{port}/v1/models" in str(err.value)


def test_endpoint_serving_another_model_id_is_refused_naming_both(tiny):
    s, model = tiny
    with serve(model, s.tokenizer, "someone/else") as (url, _):
        cfg = with_engine(s.cfg, name="server", base_url=url)
        with pytest.raises(ConfigError, match=r"serves 'someone/else', not model.path='bundled:tiny'"):
            engines.check(cfg)
        engines.check(with_engine(cfg, served_model="someone/else"))  # named explicitly: the probe decides


def test_probe_matches_the_baseline_and_refuses_another_model(tiny, random_llama):
    s, model = tiny
    text = "Question: what colour is thing 3?\nAnswer: red one"
    baseline = engines.probe(engines.build_lm(s.cfg, model=model, tokenizer=s.tokenizer, batch_size=1), s.tokenizer, text)
    with serve(model, s.tokenizer, "bundled:tiny") as (url, _):
        lm = engines.build_lm(with_engine(s.cfg, name="server", base_url=url), tokenizer=s.tokenizer, batch_size=1)
        served = engines.probe(lm, s.tokenizer, text)
    assert served == pytest.approx(baseline, abs=1e-4)
    engines.check_probe(served, baseline, "engine.base_url")
    other = er.load(s)
    with __import__("torch").no_grad():
        for p in other.parameters():
            p.mul_(0.0)  # a model that knows nothing: uniform next-token distributions
    with serve(other, s.tokenizer, "bundled:tiny") as (url, _):
        lm = engines.build_lm(with_engine(s.cfg, name="server", base_url=url), tokenizer=s.tokenizer, batch_size=1)
        with pytest.raises(ConfigError, match="serves another model"):
            engines.check_probe(engines.probe(lm, s.tokenizer, text), baseline, "engine.base_url")


def test_vllm_missing_or_without_a_packed_kernel_is_one_line(tiny, monkeypatch):
    from flipbench.engines import vllm

    s, _ = tiny
    cfg = with_engine(s.cfg, name="vllm")
    monkeypatch.setattr(vllm, "distribution", lambda: None)
    with pytest.raises(ConfigError, match=r"make setup-vllm") as err:
        engines.check(cfg)
    assert "\n" not in str(err.value)
    monkeypatch.setattr(vllm, "problems", lambda: [])
    packed = replace(with_engine(cfg, serve_format="packed"), compression=replace(cfg.compression, method="rtn", bits=3))
    with pytest.raises(ConfigError, match=r"4- or 8-bit weights, not compression.bits=3; use engine.serve_format=dense"):
        engines.check(packed)


def test_packed_needs_rtn_or_gptq_with_column_order_groups():
    from flipbench.config import to_typed
    from tests.conftest import compose

    base = ["model=tiny", "suite=tiny", "engine=vllm", "engine.serve_format=packed"]
    with pytest.raises(ConfigError, match="compression=tacq has no packed format: use engine.serve_format=dense"):
        to_typed(compose([*base, "compression=tacq"]))
    with pytest.raises(ConfigError, match="static_groups=true"):
        to_typed(compose([*base, "compression=gptq", "compression.act_order=true", "compression.group_size=32"]))
    to_typed(compose([*base, "compression=rtn"]))


@pytest.mark.parametrize("engine,max_logprobs,token_kl_topk,reference,scoring", [
    ("hf", 20, 256, 256, None),   # hf: tokenkl as it is, full vocabulary on the compressed side
    ("hf", 20, 0, 0, None),
    ("vllm", 20, 256, 20, 20),    # through an engine both sides ask engine.max_logprobs
    ("server", 20, 8, 8, 20),
    ("vllm", -1, 256, 256, None),  # -1: the compressed side's full vocabulary
    ("server", -1, 0, 256, None),
])
def test_token_kl_top_k_per_engine(engine, max_logprobs, token_kl_topk, reference, scoring):
    from flipbench.config import FlipbenchConfig

    cfg = FlipbenchConfig()
    cfg = replace(with_engine(cfg, name=engine, max_logprobs=max_logprobs), eval=replace(cfg.eval, token_kl_topk=token_kl_topk))
    assert (engines.reference_topk(cfg), engines.scoring_topk(cfg)) == (reference, scoring)
