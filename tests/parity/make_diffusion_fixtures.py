"""Parity fixtures for the diffusion decoder and its process, made with the ORIGINAL tortoise-tts 3.0.0.

Run (re-runnable, deterministic):
    /work/origenv/bin/python tests/parity/make_diffusion_fixtures.py

Writes under tests/parity/fixtures/diffusion/:
- released_keys.json: (name, shape) of every state-dict entry of the released DiffusionTts config (meta device).
- tiny.pt: a tiny DiffusionTts (random weights, every parameter non-zero), its inputs and outputs:
  get_conditioning, timestep_independent (latent and code paths), forward (aligned, precomputed,
  conditioning_free, return_code_pred), and full p / ddim sampling loops (6 respaced steps) with guidance on and off,
  each loop started from torch.manual_seed(LOOP_SEED) so that its internal randn draws are reproducible;
  do_spectrogram_diffusion end to end; the respaced schedules and space_timesteps for a few counts.
Imports only the original `tortoise` package.
"""
import json
import math
import os

import torch

from tortoise.api import do_spectrogram_diffusion, load_discrete_vocoder_diffuser
from tortoise.models.diffusion_decoder import DiffusionTts
from tortoise.utils.diffusion import space_timesteps

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "diffusion")
RELEASED = dict(model_channels=1024, num_layers=10, in_channels=100, out_channels=200, in_latent_channels=1024,
                in_tokens=8193, dropout=0, use_fp16=False, num_heads=16, layer_drop=0, unconditioned_percentage=0)
TINY = dict(model_channels=32, num_layers=2, in_channels=8, out_channels=16, in_latent_channels=24, in_tokens=40,
            dropout=0, use_fp16=False, num_heads=2, layer_drop=0, unconditioned_percentage=0)
LOOP_SEED = 1234
STEPS = 6


def released_keys():
    with torch.device("meta"):
        model = DiffusionTts(**RELEASED)
    return [[k, list(v.shape)] for k, v in model.state_dict().items()]


def randomize(model):
    """Every parameter random and non-zero (the original zero-initialises attention outputs)."""
    g = torch.Generator().manual_seed(7)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.data = torch.randn(p.shape, generator=g) / math.sqrt(max(1, p[0].numel()))
        elif name.endswith("weight"):
            p.data = 1 + 0.1 * torch.randn(p.shape, generator=g)
        else:
            p.data = 0.1 * torch.randn(p.shape, generator=g)
    return model


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "released_keys.json"), "w") as f:
        json.dump(released_keys(), f, indent=0)

    torch.manual_seed(0)
    model = randomize(DiffusionTts(**TINY)).eval()
    fx = {"config": TINY, "state_dict": {k: v.clone() for k, v in model.state_dict().items()}}
    c = TINY["in_channels"]
    g = torch.Generator().manual_seed(1)
    clips = torch.randn(1, 2, c, 64, generator=g)
    latents = torch.randn(1, 10, TINY["in_latent_channels"], generator=g)
    codes = torch.randint(0, TINY["in_tokens"], (1, 10), generator=g)
    t_len = latents.shape[1] * 4 * 24000 // 22050
    x = torch.randn(2, c, t_len, generator=g)
    ts = torch.tensor([3, 3500])
    fx.update(clips=clips, latents=latents, codes=codes, t_len=t_len, x=x, timesteps=ts)

    with torch.no_grad():
        cond = model.get_conditioning(clips)
        cond_single = model.get_conditioning(clips[:, 0])
        emb_lat, pred_lat = model.timestep_independent(latents, cond, t_len, True)
        emb_code, pred_code = model.timestep_independent(codes, cond, t_len, True)
        lat2, cond2 = latents.expand(2, -1, -1), cond.expand(2, -1)
        out_aligned, out_mel_pred = model(x, ts, lat2, cond2, return_code_pred=True)
        out_pre = model(x, ts, precomputed_aligned_embeddings=emb_lat.expand(2, -1, -1))
        out_codes = model(x, ts, codes.expand(2, -1), cond2)
        out_free = model(x, ts, precomputed_aligned_embeddings=emb_lat.expand(2, -1, -1), conditioning_free=True)
    fx.update(cond=cond, cond_single=cond_single, emb_lat=emb_lat, pred_lat=pred_lat, emb_code=emb_code,
              pred_code=pred_code, out_aligned=out_aligned, out_mel_pred=out_mel_pred, out_pre=out_pre,
              out_codes=out_codes, out_free=out_free)

    shape = (1, c, t_len)
    kwargs = {"precomputed_aligned_embeddings": emb_lat}
    for cond_free in (False, True):
        diffuser = load_discrete_vocoder_diffuser(desired_diffusion_steps=STEPS, cond_free=cond_free, cond_free_k=2.0)
        for name, loop in (("p", diffuser.p_sample_loop), ("ddim", diffuser.ddim_sample_loop)):
            torch.manual_seed(LOOP_SEED)
            noise = torch.randn(shape) * 0.9
            out = loop(model, shape, noise=noise, model_kwargs=kwargs, progress=False)
            fx[f"loop_{name}_{'cf' if cond_free else 'plain'}"] = out
            fx[f"loop_{name}_{'cf' if cond_free else 'plain'}_next_randn"] = torch.randn(3)  # RNG use matches
    diffuser = load_discrete_vocoder_diffuser(desired_diffusion_steps=STEPS, cond_free=True, cond_free_k=2.0)
    torch.manual_seed(LOOP_SEED)
    # do_spectrogram_diffusion builds its shape with 100 mel channels: give it a matching model
    fx["spectrogram_note"] = "do_spectrogram_diffusion needs in_channels=100; see spec_* entries"
    spec_cfg = dict(TINY, in_channels=100, out_channels=200)
    torch.manual_seed(0)
    spec_model = randomize(DiffusionTts(**spec_cfg)).eval()
    spec_cond = torch.randn(1, 2 * spec_cfg["model_channels"], generator=g)
    torch.manual_seed(LOOP_SEED)
    spec_mel = do_spectrogram_diffusion(spec_model, diffuser, latents, spec_cond, temperature=0.8, verbose=False)
    fx.update(spec_config=spec_cfg, spec_state_dict={k: v.clone() for k, v in spec_model.state_dict().items()},
              spec_cond=spec_cond, spec_mel=spec_mel)

    spaced = load_discrete_vocoder_diffuser(desired_diffusion_steps=30)
    fx.update(spaced30_betas=torch.from_numpy(spaced.betas), spaced30_map=torch.tensor(spaced.timestep_map),
              spaced30_log_var_clipped=torch.from_numpy(spaced.posterior_log_variance_clipped))
    fx["space_timesteps"] = {f"{n}:{s}": sorted(space_timesteps(n, s)) for n, s in
                             ((4000, [10]), (4000, [30]), (4000, [200]), (4000, "25,50"), (1000, "ddim50"))}
    torch.save(fx, os.path.join(OUT, "tiny.pt"))
    print("wrote", OUT, {k: os.path.getsize(os.path.join(OUT, k)) for k in os.listdir(OUT)})


if __name__ == "__main__":
    main()
