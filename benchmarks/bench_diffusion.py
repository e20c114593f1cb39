"""Diffusion decoder benchmark: full-size DiffusionTts (random weights), CPU, fp32 (ours also --dtype), stage by stage.

    python benchmarks/bench_diffusion.py                      # ours
    /work/origenv/bin/python benchmarks/bench_diffusion.py --impl original
    python benchmarks/bench_diffusion.py --impl both          # runs both as subprocesses, prints the ratio

Stages: conditioning (two 400-frame clips), timestep_independent (250 codes), one forward at 870 / 1088 mel frames
(200 / 250 codes) plain and guided (ours: cond + uncond in one batched forward; original: its two forwards), and a
sampling loop per sampler at 1088 frames with guidance for ``--steps`` steps (per-step cost; the 30-step loop is
extrapolated). Each stage: median seconds over ``--repeats`` after one warm-up, achieved GFLOP/s from an analytic
count (334 GFLOP per forward at 1088 frames), and real-time factor (seconds per second of 24 kHz audio). The process
CPU seconds (all threads) are printed too: on a shared machine they vary less than wall time.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import torch
from timing import median_wall_cpu  # benchmarks/timing.py

RELEASED = dict(model_channels=1024, num_layers=10, in_channels=100, out_channels=200, in_latent_channels=1024,
                in_tokens=8193, dropout=0, use_fp16=False, num_heads=16, layer_drop=0, unconditioned_percentage=0)
HOP, SR = 256, 24000  # 24 kHz mel frames
ORIGINAL_PYTHON = "/work/origenv/bin/python"


def forward_gflop(t, c=1024, diffusion_layers=13, resblocks=3):
    """One DiffusionTts forward at t frames: 13 DiffusionLayers (16 C^2 t + 4 C t^2 each), 3 ResBlocks (8 C^2 t),
    the integrating conv (4 C^2 t), input and output convs (1800 C t)."""
    return (diffusion_layers * (16 * c * c * t + 4 * c * t * t) + resblocks * 8 * c * c * t + 4 * c * c * t
            + 1800 * c * t) / 1e9


def attention_gflop(c, t):
    return (8 * c * c * t + 4 * c * t * t) / 1e9


def conditioning_gflop(clips=2, frames=400, c=1024):
    t1, t2 = frames // 2, frames // 4
    per_clip = 2 * 100 * c * 3 * t1 + 2 * c * 2 * c * 3 * t2 + 5 * attention_gflop(2 * c, t2) * 1e9
    return clips * per_clip / 1e9


def timestep_independent_gflop(codes=250, c=1024):
    return (2 * c * c * 3 * codes + 4 * attention_gflop(c, codes) * 1e9) / 1e9


def frames(codes):
    return codes * 4 * 24000 // 22050


def build(impl):
    from tortoise.models.diffusion_decoder import DiffusionTts
    is_ours = hasattr(DiffusionTts, "forward_guided")
    if is_ours != (impl == "ours"):
        raise SystemExit(f"--impl {impl} imported the wrong tortoise ({'ours' if is_ours else 'original'}); run "
                         f"--impl original with {ORIGINAL_PYTHON} and --impl ours with the project's python")
    model = DiffusionTts(**RELEASED).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # every weight non-zero (the released init zeroes attention outputs)
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(max(1, p[0].numel())) if p.dim() > 1
                    else 0.1 * torch.randn(p.shape, generator=g))
    return model


def diffuser(impl, steps, sampler):
    if impl == "ours":
        from tortoise.utils.diffusion import make_diffuser
        return make_diffuser(steps, sampler, cond_free=True, cond_free_k=2.0)
    from tortoise.api import load_discrete_vocoder_diffuser
    return load_discrete_vocoder_diffuser(desired_diffusion_steps=steps, cond_free=True, cond_free_k=2.0)


def timed(fn, repeats):
    """One warm-up (first touch of weights, oneDNN caches), then medians."""
    return median_wall_cpu(fn, repeats, warmup=1)


def run(impl, repeats, steps, stages, dtype="float32"):
    torch.manual_seed(0)
    model = build(impl)
    if dtype != "float32":  # ours: the weights held in half precision, as --half places them (GroupNorms in fp32)
        model.to(getattr(torch, dtype))
    g = torch.Generator().manual_seed(1)
    rows = []

    def add(stage, seconds_cpu, gflop, audio_s, note=""):
        seconds, cpu = seconds_cpu
        rows.append(dict(stage=stage, seconds=seconds, cpu_s=cpu, gflops=gflop / seconds if gflop else None,
                         rtf=seconds / audio_s if audio_s else None, note=note))

    with torch.no_grad():
        clips = torch.randn(1, 2, 100, 400, generator=g)
        cond = model.get_conditioning(clips)
        if "conditioning" in stages:
            add("conditioning (2 clips)", timed(lambda: model.get_conditioning(clips), repeats), conditioning_gflop(),
                2 * 400 * HOP / SR)
        embs = {}
        for codes in (200, 250):
            lat = torch.randn(1, codes, 1024, generator=g)
            embs[codes] = model.timestep_independent(lat, cond, frames(codes), False)
            if "ti" in stages and codes == 250:
                add("timestep_independent (250 codes)",
                    timed(lambda: model.timestep_independent(lat, cond, frames(codes), False), repeats),
                    timestep_independent_gflop(codes), frames(codes) * HOP / SR)
        for codes in (200, 250):
            t = frames(codes)
            x = torch.randn(1, 100, t, generator=g)
            ts = torch.tensor([2000])
            emb = embs[codes]
            audio = t * HOP / SR
            if "forward" in stages:
                add(f"forward {t} frames", timed(lambda: model(x, ts, precomputed_aligned_embeddings=emb), repeats),
                    forward_gflop(t), audio)
            if "guided" in stages:
                if impl == "ours":
                    fn = lambda: model.forward_guided(x, ts, precomputed_aligned_embeddings=emb)  # noqa: E731
                    note = "cond+uncond batched"
                else:
                    def fn():
                        model(x, ts, precomputed_aligned_embeddings=emb)
                        model(x, ts, precomputed_aligned_embeddings=emb, conditioning_free=True)
                    note = "two forwards"
                add(f"guided forward {t} frames", timed(fn, repeats), 2 * forward_gflop(t), audio, note)
        t = frames(250)
        if any(s.startswith("loop-") for s in stages) and steps > 0:  # warm the weights and kernels once
            model(torch.randn(1, 100, t, generator=g), torch.tensor([2000]), precomputed_aligned_embeddings=embs[250])
        for sampler in ("p", "ddim", "dpm++2m"):
            if f"loop-{sampler}" not in stages or steps <= 0:
                continue
            if impl == "original" and sampler == "dpm++2m":
                rows.append(dict(stage=f"loop {sampler} per step", seconds=None, cpu_s=None, gflops=None, rtf=None,
                                 note="not in the original"))
                continue
            d = diffuser(impl, steps, sampler)
            loop = d.sample_loop if impl == "ours" else {"p": d.p_sample_loop, "ddim": d.ddim_sample_loop}[sampler]
            noise = torch.randn(1, 100, t, generator=g)
            kw = {"precomputed_aligned_embeddings": embs[250]}
            t0, c0 = time.perf_counter(), time.process_time()
            loop(model, (1, 100, t), noise=noise, model_kwargs=kw, progress=False)
            per_step = (time.perf_counter() - t0) / steps
            add(f"loop {sampler} per step ({steps} steps, guided)", (per_step, (time.process_time() - c0) / steps),
                2 * forward_gflop(t), t * HOP / SR, f"30 steps ~ {30 * per_step:.0f} s")
    return rows


def print_table(rows, title):
    print(f"\n{title}")
    print(f"{'stage':44s} {'seconds':>9s} {'cpu s':>8s} {'GFLOP/s':>9s} {'RTF':>8s}  note")
    for r in rows:
        s = f"{r['seconds']:9.3f}" if r["seconds"] is not None else f"{'-':>9s}"
        s += f" {r['cpu_s']:8.2f}" if r["cpu_s"] is not None else f" {'-':>8s}"
        gf = f"{r['gflops']:9.1f}" if r["gflops"] else f"{'-':>9s}"
        rtf = f"{r['rtf']:8.3f}" if r["rtf"] else f"{'-':>8s}"
        print(f"{r['stage']:44s} {s} {gf} {rtf}  {r['note']}")


def both(args):
    results = {}
    here = os.path.abspath(__file__)
    for impl, py in (("original", args.original_python), ("ours", sys.executable)):
        cmd = [py, here, "--impl", impl, "--repeats", str(args.repeats), "--steps", str(args.steps), "--json",
               "--stages", ",".join(args.stages)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=os.path.dirname(here)).stdout
        results[impl] = json.loads(out.strip().splitlines()[-1])
        print_table(results[impl], f"{impl} (threads {torch.get_num_threads()})")
    orig = {r["stage"].split(" (")[0]: r["seconds"] for r in results["original"]}
    print("\nours / original")
    for r in results["ours"]:
        key = r["stage"].split(" (")[0]
        if r["seconds"] and orig.get(key):
            print(f"  {key:40s} {r['seconds'] / orig[key]:6.2f}")


ALL_STAGES = ["conditioning", "ti", "forward", "guided", "loop-p", "loop-ddim", "loop-dpm++2m"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--impl", choices=["ours", "original", "both"], default="ours")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per stage after one warm-up (median)")
    ap.add_argument("--steps", type=int, default=3, help="sampler steps per loop (per-step cost is reported)")
    ap.add_argument("--stages", default=",".join(ALL_STAGES), help=f"comma-separated subset of {ALL_STAGES}")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                    help="ours only: hold the weights in this dtype (the pipeline's --half)")
    ap.add_argument("--original-python", default=ORIGINAL_PYTHON)
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON line (for --impl both)")
    args = ap.parse_args()
    args.stages = [s for s in args.stages.split(",") if s]
    unknown = set(args.stages) - set(ALL_STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}: choose from {ALL_STAGES}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.impl == "both":
        return both(args)
    if args.impl == "original" and args.dtype != "float32":
        ap.error("--dtype is an option of our implementation")
    rows = run(args.impl, args.repeats, args.steps, args.stages, args.dtype)
    if args.json:
        print(json.dumps(rows))
    else:
        print_table(rows, f"{args.impl}: DiffusionTts full size, CPU fp32, {torch.get_num_threads()} threads, "
                          f"median of {args.repeats}")


if __name__ == "__main__":
    main()
