"""CLVP scoring benchmark: full-size random-weight CLVP on CPU fp32, ours against the original tortoise-tts 3.0.0.

    python benchmarks/bench_clvp.py                       # both, each in its own process, side by side
    python benchmarks/bench_clvp.py --impl ours           # ours only (our package's environment)
    /work/origenv/bin/python benchmarks/bench_clvp.py --impl original   # the original only (its environment)

Each case scores ``--candidates`` speech-code candidates of ``--codes`` codes against one text of ``--text-tokens``
tokens. Ours calls ``CLVP.score(text[1, T], codes[B, S])`` (text encoded once, candidates padded to the longest);
the original calls ``CLVP.forward(text.repeat(B, 1), codes)``, as its pipeline does, and its pipeline pads every
candidate to 500 codes first, so the original is also timed at 500 for the "pipeline" comparison.
Reported: median seconds over ``--repeats``, the analytic GFLOP of the encoder matmuls and attention, the achieved
GFLOP/s and its fraction of this machine's fp32 matmul throughput (measured at start).
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
from timing import median_wall_cpu  # benchmarks/timing.py

# The released CLVP configuration (as the original api.py builds it); kept here so the original's environment, where
# our package is not installed, can run this script. ``--impl ours`` checks it against our registry.
CLVP_CONFIG = dict(dim_text=768, dim_speech=768, dim_latent=768, num_text_tokens=256, text_enc_depth=20,
                   text_seq_len=350, text_heads=12, num_speech_tokens=8192, speech_enc_depth=20, speech_heads=12,
                   speech_seq_len=430, use_xformers=True)
PIPELINE_PAD = 500  # the original pipeline pads every candidate to max_mel_tokens codes before CLVP
ORIGINAL_PYTHON = "/work/origenv/bin/python"


def encoder_gflop(rows, length, dim, depth, heads, ff_mult=2, dim_head=64):
    """Matmul + attention GFLOP of one x-transformers encoder pass over ``rows`` sequences of ``length`` tokens."""
    inner, ff = heads * dim_head, dim * ff_mult
    per_token = 2 * (dim * 3 * inner + inner * dim + dim * 2 * ff + ff * dim) + 2 * 2 * length * inner
    return rows * length * depth * per_token / 1e9


def case_gflop(text_rows, text_len, cands, codes):
    c = CLVP_CONFIG
    return (encoder_gflop(text_rows, text_len, c["dim_text"], c["text_enc_depth"], c["text_heads"])
            + encoder_gflop(cands, codes, c["dim_speech"], c["speech_enc_depth"], c["speech_heads"]))


def matmul_gflops(reps=3):
    """fp32 matmul throughput at a CLVP-like shape (2048 x 768 @ 768 x 3072), GFLOP/s (best of ``reps``)."""
    a, b = torch.randn(2048, 768), torch.randn(768, 3072)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 * 768 * 3072 / best / 1e9


def build_model(impl):
    import tortoise
    from tortoise.models.clvp import CLVP
    in_origenv = "origenv" in os.path.realpath(tortoise.__file__)
    if (impl == "original") != in_origenv:
        raise SystemExit(f"--impl {impl} imported tortoise from {tortoise.__file__}; run --impl original with "
                         f"{ORIGINAL_PYTHON} and --impl ours with the project's python")
    if impl == "ours":
        from tortoise.utils.checkpoints import RELEASED_CONFIGS
        if RELEASED_CONFIGS["clvp"] != CLVP_CONFIG:
            raise SystemExit("CLVP_CONFIG in this script differs from RELEASED_CONFIGS['clvp']; update the script")
    torch.manual_seed(0)
    return CLVP(**CLVP_CONFIG).eval()


def run_impl(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_gflops()
    model = build_model(args.impl)
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(1, CLVP_CONFIG["num_text_tokens"], (1, args.text_tokens), generator=gen)
    lengths = sorted(set(args.codes) | ({PIPELINE_PAD} if args.impl == "original" else set()))
    results = []
    with torch.no_grad():
        if args.impl == "ours":
            model.score(text, torch.zeros(2, 50, dtype=torch.long))  # warm-up
        else:
            model(text.repeat(2, 1), torch.zeros(2, 50, dtype=torch.long))
        for length in lengths:
            codes = torch.randint(0, CLVP_CONFIG["num_speech_tokens"], (args.candidates, length), generator=gen)
            if args.impl == "ours":
                seconds, cpu = median_wall_cpu(lambda: model.score(text, codes), args.repeats)
                gflop = case_gflop(1, args.text_tokens, args.candidates, length)
            else:
                texts = text.repeat(args.candidates, 1)
                seconds, cpu = median_wall_cpu(lambda: model(texts, codes, return_loss=False), args.repeats)
                gflop = case_gflop(args.candidates, args.text_tokens, args.candidates, length)
            results.append(dict(impl=args.impl, codes=length, seconds=seconds, cpu_seconds=cpu, gflop=gflop, peak_gflops=peak,
                                threads=torch.get_num_threads()))
            print("RESULT " + json.dumps(results[-1]), flush=True)
    return results


def row(stage, r):
    rate = r["gflop"] / r["seconds"]
    return (f"| {stage} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | {r['gflop']:.0f} | {rate:.1f} | "
            f"{rate / r['peak_gflops']:.2f} |")


def ratio(a, b):
    return f"{a['seconds'] / b['seconds']:.2f} wall, {a['cpu_seconds'] / b['cpu_seconds']:.2f} CPU"


def print_table(results, args):
    by = {(r["impl"], r["codes"]): r for r in results}
    print(f"\nCLVP, {args.candidates} candidates, text {args.text_tokens} tokens, CPU fp32, "
          f"{results[0]['threads']} threads, median of {args.repeats}")
    print("| stage | seconds | CPU seconds | GFLOP | GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (r["codes"], r["impl"])):
        label = "ours score()" if r["impl"] == "ours" else "original forward()"
        print(row(f"{label}, {r['codes']} codes", r))
    print("matmul peak measured: " + ", ".join(f"{r['impl']} {r['peak_gflops']:.0f} GFLOP/s"
                                                  for r in {r['impl']: r for r in results}.values()))
    for length in sorted(set(args.codes)):
        ours, orig = by.get(("ours", length)), by.get(("original", length))
        pipe = by.get(("original", max(length, PIPELINE_PAD)))
        if ours and orig:
            line = f"{length} codes: ours / original at equal length = {ratio(ours, orig)}"
            if pipe:
                line += f"; ours / original pipeline (padded to {max(length, PIPELINE_PAD)}) = {ratio(ours, pipe)}"
            print(line)


def run_both(args):
    results = []
    for impl, python in (("ours", sys.executable), ("original", args.original_python)):
        cmd = [python, os.path.abspath(__file__), "--impl", impl, "--codes", *map(str, args.codes),
               "--candidates", str(args.candidates), "--text-tokens", str(args.text_tokens),
               "--repeats", str(args.repeats)] + (["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd="/").stdout
        results += [json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")]
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=["ours", "original", "both"], default="both")
    parser.add_argument("--codes", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--text-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--original-python", default=ORIGINAL_PYTHON)
    args = parser.parse_args()
    results = run_both(args) if args.impl == "both" else run_impl(args)
    print_table(results, args)


if __name__ == "__main__":
    main()
