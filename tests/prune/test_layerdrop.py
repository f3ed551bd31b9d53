"""Layer dropping: a block that does nothing can be dropped without changing a logit, it is the one the
angular distance picks, and the shorter model generates with its KV cache like without it."""

import pytest
import torch

from flipbench.compress.families import decoder_layers, family_of, weight_matrix
from flipbench.compress.prune.layerdrop import angular_distances, drop_layers, select_layers
from tests.quant.tiny_models import random_ids, tiny_model

FAMILIES = ["llama", "gpt2", "opt", "phi3"]
OUTPUT_PROJECTIONS = {"llama": ("self_attn.o_proj", "mlp.down_proj"), "phi3": ("self_attn.o_proj", "mlp.down_proj"),
                      "gpt2": ("attn.c_proj", "mlp.c_proj"), "opt": ("self_attn.out_proj", "fc2")}


def silence(model, index: int) -> None:
    """Make block index the identity on the residual stream: its attention and MLP write nothing."""
    family = family_of(model)
    layer = decoder_layers(model, family)[index]
    for name in OUTPUT_PROJECTIONS[model.config.model_type]:
        module = layer.get_submodule(name)
        weight_matrix(module, family).zero_()
        if getattr(module, "bias", None) is not None:
            module.bias.data.zero_()


@pytest.mark.parametrize("model_type", FAMILIES)
def test_dropping_an_identity_block_changes_no_logit_and_keeps_generate_consistent(model_type):
    model = tiny_model(model_type)
    silence(model, 0)
    ids = random_ids(2, 12, seed=1)
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert select_layers(model, 1, "angular", ids) == [0]  # angle 0 between its input and output
    drop_layers(model, [0])
    assert len(decoder_layers(model, family_of(model))) == 1 == model.config.num_hidden_layers
    assert all(m.layer_idx == 0 for m in model.modules() if isinstance(getattr(m, "layer_idx", None), int))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
    prompt = random_ids(1, 6, seed=2)
    cached = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False)
    assert cached.shape == (1, 11) and torch.equal(cached, uncached)


def test_angular_distances_by_hand_on_the_block_boundaries():
    model = tiny_model("llama")
    ids = random_ids(2, 8, seed=3)
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states  # last one is after the final norm
        h0 = hidden[0]
        h1 = model.model.layers[0](h0, position_embeddings=model.model.rotary_emb(h0, torch.arange(8)[None]))
        h1 = h1[0] if isinstance(h1, tuple) else h1
    cos = torch.nn.functional.cosine_similarity(h0, h1, dim=-1)
    expected = (torch.arccos(cos) / torch.pi).mean().item()
    distances = angular_distances(model, ids, 1, "cpu")
    assert len(distances) == 2
    assert distances[0] == pytest.approx(expected, rel=1e-4)


def test_last_drops_the_final_blocks_and_layer_types_follow():
    model = tiny_model("qwen2")
    model.config.layer_types = ["full_attention", "sliding_attention"]
    assert select_layers(model, 1, "last") == [1]
    drop_layers(model, [1])
    assert model.config.layer_types == ["full_attention"] and model.config.num_hidden_layers == 1
    assert model.generate(random_ids(1, 4), max_new_tokens=3, do_sample=False).shape == (1, 7)
