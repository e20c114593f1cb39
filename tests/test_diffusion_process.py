"""The diffusion process and the p / ddim loops against the original tortoise-tts 3.0.0 (fixed seeds and noise)."""
import os

import numpy as np
import pytest
import torch
from conftest import load_parity_fixture, tiny_diffusion_model

from tortoise.models.diffusion_decoder import DiffusionTts
from tortoise.utils.diffusion import (SpacedDiffusion, do_spectrogram_diffusion, get_named_beta_schedule,
                                      make_diffuser, output_length, space_timesteps)

FIXTURES = os.path.join(os.path.dirname(__file__), "parity", "fixtures", "diffusion")
LOOP_SEED, STEPS = 1234, 6  # as in tests/parity/make_diffusion_fixtures.py
# Loops: per-forward differences of ~1e-6 are multiplied by sqrt(1/alpha_bar - 1) ~ 158 at the noisiest step (and by
# 1 + k with guidance) before the x0 clamp; outputs lie in [-1, 1]. Observed <= 5.3e-5; tolerance 2e-4.
LOOP_ATOL = 2e-4


@pytest.fixture(scope="module")
def fx():
    return load_parity_fixture("diffusion", "tiny.pt")


@pytest.fixture(scope="module")
def model(fx):
    return tiny_diffusion_model(fx)


class CountingModel(torch.nn.Module):
    """Wraps a DiffusionTts and counts its plain and guided forwards."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.plain, self.guided = inner, 0, 0

    def forward(self, *a, **kw):
        self.plain += 1
        return self.inner(*a, **kw)

    def forward_guided(self, *a, **kw):
        self.guided += 1
        return self.inner.forward_guided(*a, **kw)


@pytest.mark.parametrize("cond_free", [False, True])
@pytest.mark.parametrize("name", ["p", "ddim"])
def test_loops_match_original(model, fx, name, cond_free):
    shape = (1, fx["config"]["in_channels"], fx["t_len"])
    diffuser = make_diffuser(STEPS, name, cond_free=cond_free, cond_free_k=2.0)
    counted = CountingModel(model)
    torch.manual_seed(LOOP_SEED)
    noise = torch.randn(shape) * 0.9
    out = diffuser.sample_loop(counted, shape, noise=noise,
                               model_kwargs={"precomputed_aligned_embeddings": fx["emb_lat"]})
    key = f"loop_{name}_{'cf' if cond_free else 'plain'}"
    assert (out - fx[key]).abs().max().item() <= LOOP_ATOL
    assert torch.equal(torch.randn(3), fx[key + "_next_randn"])  # the loop used the RNG as the original does
    assert (counted.guided, counted.plain) == ((STEPS, 0) if cond_free else (0, STEPS))


def test_original_method_names(model, fx):
    shape = (1, fx["config"]["in_channels"], fx["t_len"])
    diffuser = make_diffuser(STEPS, "p", cond_free=True, cond_free_k=2.0)
    kw = {"precomputed_aligned_embeddings": fx["emb_lat"]}
    torch.manual_seed(LOOP_SEED)
    a = diffuser.ddim_sample_loop(model, shape, noise=torch.randn(shape) * 0.9, model_kwargs=kw)
    assert (a - fx["loop_ddim_cf"]).abs().max().item() <= LOOP_ATOL
    out = diffuser.p_mean_variance(model, torch.zeros(shape), torch.tensor([STEPS - 1]), model_kwargs=kw)
    assert set(out) == {"mean", "variance", "log_variance", "pred_xstart"}


def test_do_spectrogram_diffusion_matches_original(fx):
    spec = DiffusionTts(**fx["spec_config"]).eval()
    spec.load_state_dict(fx["spec_state_dict"], strict=True)
    diffuser = make_diffuser(STEPS, "p", cond_free=True, cond_free_k=2.0)
    torch.manual_seed(LOOP_SEED)
    mel = do_spectrogram_diffusion(spec, diffuser, fx["latents"], fx["spec_cond"], temperature=0.8, verbose=False)
    ref = fx["spec_mel"]  # denormalised: scale ~11.5, so LOOP_ATOL x 11.5 / 2
    assert mel.shape == ref.shape == (1, 100, output_length(fx["latents"].shape[1]))
    assert (mel - ref).abs().max().item() <= LOOP_ATOL * 11.5 / 2


@torch.no_grad()
def test_schedule_and_respacing_match_original(fx):
    for key, want in fx["space_timesteps"].items():
        n, counts = key.split(":")
        counts = [int(c) for c in counts.strip("[]").split(",")] if counts.startswith("[") else counts
        assert sorted(space_timesteps(int(n), counts)) == want
    spaced = SpacedDiffusion(use_timesteps=space_timesteps(4000, [30]), betas=get_named_beta_schedule("linear", 4000),
                             model_mean_type="epsilon", model_var_type="learned_range", loss_type="mse")
    assert spaced.timestep_map == fx["spaced30_map"].tolist()
    np.testing.assert_allclose(spaced.betas, fx["spaced30_betas"].numpy(), rtol=1e-12)
    np.testing.assert_allclose(spaced.posterior_log_variance_clipped, fx["spaced30_log_var_clipped"].numpy(),
                               rtol=1e-12)


def test_guidance_ramp_is_the_originals():
    d = make_diffuser(10, "p", cond_free=True, cond_free_k=2.0)
    assert d.guidance_scale(9) == pytest.approx(2.0 * (1 - 9 / 10))
    assert d.guidance_scale(0) == pytest.approx(2.0)
    assert make_diffuser(10, "p", cond_free=False).guidance_scale(0) == 0.0


def test_clear_errors():
    with pytest.raises(ValueError, match="unknown sampler"):
        make_diffuser(10, "euler")
    with pytest.raises(ValueError, match="1..4000"):
        make_diffuser(0)
    with pytest.raises(ValueError, match="cond_free=True"):
        make_diffuser(10, "dpm++2m", cond_free=False)
    with pytest.raises(ValueError, match="cannot divide"):
        space_timesteps(10, [20])
    with pytest.raises(ValueError, match="cosine"):
        get_named_beta_schedule("quadratic", 10)
