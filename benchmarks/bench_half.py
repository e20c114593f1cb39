"""How far half precision moves the pipeline from float32, with the same seed (the drift report of --half).

    python -m tortoise.utils.make_test_models /tmp/full --size full
    python benchmarks/bench_half.py --models_dir /tmp/full --dtype bfloat16

Two pipelines on the same checkpoints, one in float32 and one with the half-tolerant networks held in ``--dtype``
(what ``--half`` does on a device whose half dtype that is; ``--dtype`` forces it on any CPU). Same text, voice and
seed; reported: the share of identical codes among the AR samples (position by position) and how many tokens the rows
agree on before they first differ, the relative L2 error of the AR latents of the same codes, and of the final mel of
the same codes (diffusion with the same noise). Random weights: the figures bound how far the arithmetic moves the
networks, not how the speech sounds. Prints the CPU and whether it has native bf16 (without it, bf16 is emulated).
"""
import argparse
import time

import torch

from tortoise import api, pipeline
from tortoise.options import preset_options

TEXT = "The old lighthouse keeper watched the storm roll in over the cold bay."


def clips(seconds=6.0, sr=22050):
    out = []
    for i, f0 in enumerate((180.0, 230.0)):
        t = torch.arange(int(sr * seconds)) / sr
        g = torch.Generator().manual_seed(i)
        out.append((0.3 * torch.sin(2 * torch.pi * f0 * t) + 0.01 * torch.randn(t.shape[0], generator=g))[None])
    return out


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def run(tts, opts, voice, seed, best=None):
    """Codes, then latents and the mel of ``best`` (this pipeline's own codes when None), timed per stage."""
    tts.deterministic_state(seed)
    text = tts._text_tokens(TEXT)
    times = {}
    t0 = time.perf_counter()
    cond = tts._voice_conditioning(voice)
    times["conditioning"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes = pipeline.sample_codes(tts.models, cond, text, opts, tts._batch)
    times["ar_sampling"] = time.perf_counter() - t0
    chosen = codes[:1].clone() if best is None else best
    for row in chosen:
        pipeline.fix_autoregressive_output(row, tts.autoregressive.stop_mel_token, complain=False)
    t0 = time.perf_counter()
    latents = pipeline.ar_latents(tts.models, cond, text, chosen)
    times["latent_pass"] = time.perf_counter() - t0
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    mel = pipeline.diffuse(tts.diffusion, pipeline.make_diffuser(opts.diffusion_iterations, opts.sampler,
                                                                 opts.cond_free, opts.cond_free_k),
                           chosen[0], latents[0], cond, opts)
    times["diffusion"] = time.perf_counter() - t0
    return codes, chosen, latents, mel, cond, times


def agreement(a, b):
    width = min(a.shape[1], b.shape[1])
    same = (a[:, :width] == b[:, :width])
    prefix = [int(row.long().cumprod(0).sum()) for row in same]
    return float(same.float().mean()), prefix, width


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models_dir", required=True)
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    ap.add_argument("--samples", type=int, default=4, help="AR samples (one batch)")
    ap.add_argument("--max_mel_tokens", type=int, default=64, help="codes drawn per sample")
    ap.add_argument("--steps", type=int, default=10, help="diffusion steps (ddim, guided)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import xpu
    info = xpu.describe("cpu")
    print(f"CPU: {info.name}; native bf16: {xpu.device.cpu_has_native_bf16()}; threads {torch.get_num_threads()}")
    opts = preset_options("ultra_fast", num_autoregressive_samples=args.samples, max_mel_tokens=args.max_mel_tokens,
                          diffusion_iterations=args.steps)
    voice = clips()
    full = api.TextToSpeech(models_dir=args.models_dir, device="cpu", autoregressive_batch_size=args.samples,
                            enable_redaction=False)
    half = api.TextToSpeech(models_dir=args.models_dir, device="cpu", autoregressive_batch_size=args.samples,
                            enable_redaction=False, dtype=args.dtype)
    codes32, best, lat32, mel32, cond32, t32 = run(full, opts, voice, args.seed)
    codes16, _, lat16, mel16, cond16, t16 = run(half, opts, voice, args.seed, best=best.clone())
    share, prefix, width = agreement(codes32, codes16)
    print(f"{args.dtype} vs float32, same seed ({args.samples} samples x {width} codes, random weights):")
    print(f"  AR conditioning latent   relative L2 {rel(cond16.auto_latent, cond32.auto_latent):.2e}")
    print(f"  diffusion latent         relative L2 {rel(cond16.diffusion_latent, cond32.diffusion_latent):.2e}")
    print(f"  codes identical          {share:.1%} (tokens agreed before the first difference, per row: {prefix})")
    print(f"  AR latents, same codes   relative L2 {rel(lat16, lat32):.2e}")
    print(f"  final mel, same codes    relative L2 {rel(mel16, mel32):.2e} ({args.steps} ddim steps, guided)")
    print("  seconds (float32 / " + args.dtype + "): " + ", ".join(f"{k} {t32[k]:.1f} / {t16[k]:.1f}" for k in t32))


if __name__ == "__main__":
    main()
