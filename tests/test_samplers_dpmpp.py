"""DPM-Solver++(2M) where the answer is known: Gaussian data has a closed-form optimal denoiser.

Data x0 ~ N(mu, s^2) per element; x_t = alpha_t x0 + sigma_t eps. Then E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2
+ sigma^2) (x_t - alpha mu), and the probability-flow ODE maps a start x_T = alpha_T mu + sqrt(alpha_T^2 s^2 +
sigma_T^2) z exactly to x0 = mu + s z. A correct sampler must converge to that map (second order for 2M), recover the
data's mean and variance, and agree with DDIM run with many steps.
"""
import math

import numpy as np
import torch

from tortoise.models.diffusion_decoder import DiffusionTts
from tortoise.utils.diffusion import (SAMPLERS, get_named_beta_schedule, lambda_uniform_timesteps, make_diffuser,
                                      sample_dpmpp_2m)

MU, S = 0.3, 0.2
N_SAMPLES = 20000


class GaussianEpsModel(torch.nn.Module):
    """The optimal epsilon predictor for N(MU, S^2) data on the 4000-step linear schedule (variance half zero)."""

    def __init__(self):
        super().__init__()
        ac = np.cumprod(1 - get_named_beta_schedule("linear", 4000))
        self.register_buffer("ac", torch.from_numpy(ac))
        self.calls = 0

    def forward(self, x, timesteps, **kw):
        self.calls += 1
        ac = self.ac[timesteps.long()].view(-1, *[1] * (x.dim() - 1))
        a, sg = ac.sqrt(), (1 - ac).sqrt()
        x0 = MU + a * S * S / (a * a * S * S + sg * sg) * (x - a * MU)
        return torch.cat([(x - a * x0) / sg, torch.zeros_like(x)], dim=1)


def start_and_exact(model):
    z = torch.randn(1, 1, N_SAMPLES, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a_t = model.ac[-1].sqrt()
    x_t = a_t * MU + (a_t ** 2 * S * S + 1 - model.ac[-1]).sqrt() * z
    return x_t, MU + S * z


def run(sampler, steps, model, x_t):
    d = make_diffuser(steps, sampler, cond_free=False) if sampler != "dpm++2m" else make_diffuser(steps, "ddim",
                                                                                                  cond_free=False)
    d.sampler = sampler  # dpm++2m needs cond_free for the real model only; the closed-form model is unconditional
    return d.sample_loop(model, x_t.shape, noise=x_t.clone(), clip_denoised=False)


def test_recovers_the_data_distribution():
    model = GaussianEpsModel()
    x_t, exact = start_and_exact(model)
    out = run("dpm++2m", 50, model, x_t)
    assert model.calls == 50
    assert (out - exact).abs().max().item() < 3e-3
    # moments: within sampling error of the data's (the exact map's sample moments are within it by construction)
    assert abs(out.mean().item() - MU) < 4 * S / math.sqrt(N_SAMPLES)
    assert abs(out.std().item() / S - 1) < 0.03


def test_is_second_order():
    model = GaussianEpsModel()
    x_t, exact = start_and_exact(model)
    errs = [(run("dpm++2m", n, model, x_t) - exact).abs().max().item() for n in (20, 40, 80)]
    assert errs[0] / errs[1] > 3 and errs[1] / errs[2] > 3, errs  # halving the step divides the error by ~4


def test_agrees_with_ddim_at_many_steps():
    model = GaussianEpsModel()
    x_t, exact = start_and_exact(model)
    dpm = run("dpm++2m", 100, model, x_t)
    ddim = run("ddim", 1000, model, x_t)
    assert (dpm - ddim).abs().max().item() < 2e-2
    assert (dpm - exact).abs().max().item() < (ddim - exact).abs().max().item()  # 10x fewer calls, still closer


def test_first_order_form_is_ddim():
    # with a constant x0 estimate, 2M's extrapolation is inert and each step is DDIM's (eta 0) update exactly
    ac = torch.tensor([0.01, 0.3, 0.8, 0.99], dtype=torch.float64)
    al, sg = ac.sqrt(), (1 - ac).sqrt()
    x0 = torch.tensor(0.5, dtype=torch.float64)
    x = torch.tensor(1.7, dtype=torch.float64)
    seen = []

    def denoise(x_, k):
        seen.append(x_.clone())
        return x0

    sample_dpmpp_2m(denoise, x, al, sg)
    ddim = [x]
    for k in range(3):
        eps = (ddim[-1] - al[k] * x0) / sg[k]
        ddim.append(al[k + 1] * x0 + sg[k + 1] * eps)
    assert torch.allclose(torch.stack(seen), torch.stack(ddim), atol=1e-12)


def test_lambda_uniform_grid():
    ac = np.cumprod(1 - get_named_beta_schedule("linear", 4000))
    steps = lambda_uniform_timesteps(ac, 30)
    assert steps[0] == 3999 and steps[-1] == 0 and len(steps) == 30 and (np.diff(steps) < 0).all()
    lam = 0.5 * np.log(ac[steps] / (1 - ac[steps]))
    h = np.diff(lam)
    assert h.max() < 1.6 * np.median(h)  # near-uniform (t = 0 and 1 are 0.36 apart in lambda)


@torch.no_grad()
def test_guided_real_model_one_batched_forward_per_step():
    torch.manual_seed(0)
    cfg = dict(model_channels=32, num_layers=1, in_channels=8, out_channels=16, in_latent_channels=24, in_tokens=40,
               num_heads=2, layer_drop=0, unconditioned_percentage=0)
    model = DiffusionTts(**cfg).eval()
    calls = []
    real = model.forward_guided
    model.forward_guided = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    emb = torch.randn(1, 32, 20)
    d = make_diffuser(7, "dpm++2m", cond_free=True, cond_free_k=2.0)
    out = d.sample_loop(model, (1, 8, 20), noise=torch.randn(1, 8, 20),
                        model_kwargs={"precomputed_aligned_embeddings": emb})
    assert len(calls) == 7 and out.shape == (1, 8, 20) and torch.isfinite(out).all()
    assert out.abs().max() <= 1  # the x0 estimate is clamped to the mel range, as for p and ddim
    assert "dpm++2m" in SAMPLERS
