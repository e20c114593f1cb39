"""DiffusionTts against the original tortoise-tts 3.0.0 (fixtures from tests/parity/make_diffusion_fixtures.py)."""
import json
import os

import pytest
import torch

from tortoise.models.diffusion_decoder import DiffusionLayer, DiffusionTts
from tortoise.utils.checkpoints import RELEASED_CONFIGS
from conftest import load_parity_fixture, tiny_diffusion_model

FIXTURES = os.path.join(os.path.dirname(__file__), "parity", "fixtures", "diffusion")
# Single forwards: float32 sums in a different order (SDPA, batched clips) -> differences of a few 1e-6 on O(1)
# outputs. Tolerance: 1e-5 of the reference's largest magnitude.
RTOL_OF_MAX = 1e-5


@pytest.fixture(scope="module")
def fx():
    return load_parity_fixture("diffusion", "tiny.pt")


@pytest.fixture(scope="module")
def model(fx):
    return tiny_diffusion_model(fx)


def close(ours, ref):
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err <= RTOL_OF_MAX * ref.abs().max().item(), f"max error {err} vs scale {ref.abs().max().item()}"


def test_released_state_dict_layout():
    with open(os.path.join(FIXTURES, "released_keys.json")) as f:
        expected = json.load(f)
    with torch.device("meta"):
        m = DiffusionTts(**RELEASED_CONFIGS["diffusion"])
    assert [[k, list(v.shape)] for k, v in m.state_dict().items()] == expected
    assert sum(v.numel() for v in m.state_dict().values()) == 292_334_380


@torch.no_grad()
def test_conditioning(model, fx):
    close(model.get_conditioning(fx["clips"]), fx["cond"])
    close(model.get_conditioning(fx["clips"][:, 0]), fx["cond_single"])


@torch.no_grad()
def test_timestep_independent(model, fx):
    emb, pred = model.timestep_independent(fx["latents"], fx["cond"], fx["t_len"], True)
    close(emb, fx["emb_lat"])
    close(pred, fx["pred_lat"])
    emb, pred = model.timestep_independent(fx["codes"], fx["cond"], fx["t_len"], True)
    close(emb, fx["emb_code"])
    close(pred, fx["pred_code"])
    close(model.timestep_independent(fx["latents"], fx["cond"], fx["t_len"], False), fx["emb_lat"])


@torch.no_grad()
def test_forward_variants(model, fx):
    x, ts = fx["x"], fx["timesteps"]
    lat2, cond2 = fx["latents"].expand(2, -1, -1), fx["cond"].expand(2, -1)
    out, mel_pred = model(x, ts, lat2, cond2, return_code_pred=True)
    close(out, fx["out_aligned"])
    close(mel_pred, fx["out_mel_pred"])
    close(model(x, ts, precomputed_aligned_embeddings=fx["emb_lat"].expand(2, -1, -1)), fx["out_pre"])
    close(model(x, ts, fx["codes"].expand(2, -1), cond2), fx["out_codes"])
    close(model(x, ts, precomputed_aligned_embeddings=fx["emb_lat"], conditioning_free=True), fx["out_free"])


@torch.no_grad()
def test_guided_forward_is_both_passes_in_one_batch(model, fx):
    x, ts = fx["x"], fx["timesteps"]
    cond, uncond = model.forward_guided(x, ts, precomputed_aligned_embeddings=fx["emb_lat"])
    close(cond, fx["out_pre"])
    close(uncond, fx["out_free"])
    cond2, _ = model.forward_guided(x, ts, aligned_conditioning=fx["latents"].expand(2, -1, -1),
                                    conditioning_latent=fx["cond"].expand(2, -1))
    close(cond2, fx["out_aligned"])


@torch.no_grad()
def test_inputs_are_not_modified(model, fx):
    x, emb = fx["x"].clone(), fx["emb_lat"].expand(2, -1, -1).clone()
    model(x, fx["timesteps"], precomputed_aligned_embeddings=emb)
    model.forward_guided(x, fx["timesteps"], precomputed_aligned_embeddings=emb)
    assert torch.equal(x, fx["x"]) and torch.equal(emb, fx["emb_lat"].expand(2, -1, -1))


@torch.no_grad()
def test_relative_bias_buffer_follows_length(model, fx):
    # the shared bias buffer is rebuilt when T changes; outputs at a length must not depend on what ran before
    emb = fx["emb_lat"]
    x = fx["x"][:1]
    first = model(x, fx["timesteps"][:1], precomputed_aligned_embeddings=emb)
    short = model(x[..., :20], fx["timesteps"][:1], precomputed_aligned_embeddings=emb[..., :20])
    fresh = DiffusionTts(**fx["config"]).eval()
    fresh.load_state_dict(fx["state_dict"])
    close(short, fresh(x[..., :20], fx["timesteps"][:1], precomputed_aligned_embeddings=emb[..., :20]))
    assert torch.equal(model(x, fx["timesteps"][:1], precomputed_aligned_embeddings=emb), first)


@torch.no_grad()
def test_layer_without_shared_buffer_matches(model, fx):
    layer = model.layers[0]
    assert isinstance(layer, DiffusionLayer)
    h = torch.randn(2, fx["config"]["model_channels"], 17, generator=torch.Generator().manual_seed(3))
    emb = torch.randn(2, fx["config"]["model_channels"], generator=torch.Generator().manual_seed(4))
    cache = model._relative_bias_cache(17, h.device, h.dtype)
    close(layer(h.clone(), emb, cache), layer(h.clone(), emb))
    # and the attention equals the shared arch_util AttentionBlock's own forward
    y = layer.resblk(h.clone(), emb)
    close(layer(h.clone(), emb), layer.attn(y.clone()))


@torch.no_grad()
def test_strided_bias_equals_dense_bias_bitwise(model, fx):
    # the CPU cache hands SDPA a strided (Hankel) view with the queries reversed; it must give exactly the bits of
    # the dense (H, T, T) bias that other backends use
    from tortoise.models.diffusion_decoder import RelativeBiasCache, attend
    block = model.layers[0].attn
    for t in (1, 2, 17, 40):
        h = torch.randn(2, fx["config"]["model_channels"], t, generator=torch.Generator().manual_seed(t))
        strided = RelativeBiasCache(t, block.num_heads, h.device, h.dtype, strided=True)
        dense = RelativeBiasCache(t, block.num_heads, h.device, h.dtype, strided=False)
        assert strided.buffer.shape[1] == 2 * t - 1 and dense.buffer.shape[1] == t * t
        assert torch.equal(strided.bias(block.relative_pos_embeddings).flip(2),
                           dense.bias(block.relative_pos_embeddings))
        assert torch.equal(attend(block, h.clone(), strided), attend(block, h.clone(), dense))
        close(attend(block, h.clone(), strided), attend(block, h.clone()))


@torch.no_grad()
def test_projection_workspace_is_reused_and_follows_batch_size(model, fx):
    from tortoise.models.diffusion_decoder import RelativeBiasCache
    cache = RelativeBiasCache(9, 2, "cpu", torch.float32)
    w = cache.workspace((1, 9, 12))
    assert cache.workspace((1, 9, 12)) is w and cache.workspace((2, 9, 12)).shape == (2, 9, 12)
    # one model run at batch 2, 1, 2 (the buffer reallocated each time) gives what it gives from a fresh start
    x, ts, emb = fx["x"], fx["timesteps"], fx["emb_lat"]
    both = model(x, ts, precomputed_aligned_embeddings=emb)
    one = model(x[:1], ts[:1], precomputed_aligned_embeddings=emb)
    assert torch.equal(model(x, ts, precomputed_aligned_embeddings=emb), both)
    fresh = DiffusionTts(**fx["config"]).eval()
    fresh.load_state_dict(fx["state_dict"])
    assert torch.equal(fresh(x[:1], ts[:1], precomputed_aligned_embeddings=emb), one)


def test_missing_conditioning_is_a_clear_error(model, fx):
    with pytest.raises(ValueError, match="precomputed_aligned_embeddings"):
        model(fx["x"], fx["timesteps"])
    with pytest.raises(ValueError, match="return_code_pred"):
        model(fx["x"], fx["timesteps"], precomputed_aligned_embeddings=fx["emb_lat"], return_code_pred=True)


def test_grad_mode_is_refused_with_the_fix(fx):
    m = DiffusionTts(**fx["config"])
    with pytest.raises(RuntimeError, match="no_grad"):
        m(fx["x"], fx["timesteps"], precomputed_aligned_embeddings=fx["emb_lat"])
    with pytest.raises(RuntimeError, match="no_grad"):
        m.timestep_independent(fx["latents"], fx["cond"], fx["t_len"], False)
    with pytest.raises(RuntimeError, match="no_grad"):
        m.get_conditioning(fx["clips"])


@torch.no_grad()
def test_half_precision_model_runs_close_to_fp32(model, fx):
    # `--half` casts the model to the device layer's half dtype (bfloat16 here: CPUs have it, fp16 convs they may not)
    half = DiffusionTts(**fx["config"]).eval()
    half.load_state_dict(fx["state_dict"])
    half.to(torch.bfloat16)
    emb = half.timestep_independent(fx["latents"], fx["cond"], fx["t_len"], False)
    assert emb.dtype == torch.bfloat16
    cond, uncond = half.forward_guided(fx["x"], fx["timesteps"], precomputed_aligned_embeddings=emb)
    assert cond.dtype == torch.float32  # outputs come back in fp32 for the sampler
    for ours, ref in ((cond, fx["out_pre"]), (uncond, fx["out_free"])):
        assert (ours - ref).abs().max() <= 0.1 * ref.abs().max()  # bf16 has 8 mantissa bits


@torch.no_grad()
def test_autocast_region_does_not_change_an_fp32_model(model, fx):
    x, ts = fx["x"], fx["timesteps"]
    want_emb = model.timestep_independent(fx["latents"], fx["cond"], fx["t_len"], False)
    want = model.forward_guided(x, ts, precomputed_aligned_embeddings=want_emb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model.timestep_independent(fx["latents"], fx["cond"], fx["t_len"], False)
        got = model.forward_guided(x, ts, precomputed_aligned_embeddings=emb)
    assert emb.dtype == torch.float32 and torch.equal(emb, want_emb)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
