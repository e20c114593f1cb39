"""The benchmark scripts still run against the code they measure (on tiny models; no timing is asserted).

A benchmark that reaches into a network's internals breaks silently when those change; these runs catch it. Their
numbers are meaningless at this size: the real figures come from full-size models (README, "Speed").
"""
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script, *args, timeout=600):
    return subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          cwd=BENCH, timeout=timeout)


def test_bench_pipeline_runs_every_stage_of_ours(tiny_models_dir):
    proc = _run("bench_pipeline.py", "--models_dir", tiny_models_dir, "--codes", 8, "--samples", 2, "--steps", 2,
                "--batch_size", 2, "--presets", "ultra_fast", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["impl"], r["preset"], r["codes"]) for r in rows] == [("ours", "ultra_fast", 8)]
    for stage in ("conditioning", "ar_sampling", "clvp", "latent_pass", "diffusion", "vocoder"):
        assert rows[0][stage] > 0, stage  # each stage function was found and timed
    assert rows[0]["audio_s"] > 0


def test_bench_pipeline_fixes_the_length_on_a_graph_backend_too(export_models):
    """The fixed generation length holds on a graph backend (its logits are edited where the decode loop gets them):
    the same audio length as torch's run."""
    rows = []
    for backend in ("torch", "onnxruntime"):
        proc = _run("bench_pipeline.py", "--models_dir", export_models, "--codes", 6, "--samples", 2, "--steps", 2,
                    "--batch_size", 2, "--presets", "ultra_fast", "--backend", backend, "--json")
        assert proc.returncode == 0, proc.stderr
        rows += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["impl"] for r in rows] == ["ours", "ours-onnxruntime"]
    assert rows[0]["audio_s"] == rows[1]["audio_s"] > 0
    assert all(r["rss_peak"] > 0 for r in rows)


def test_bench_backends_runs_every_variant_and_the_graphs_match_torch(export_models):
    proc = _run("bench_backends.py", "--models_dir", export_models,
                "--stages", "ar_step,prefill,latent,codes,diffusion,univnet,hifigan", "--variants", "torch,ort,ov-f32",
                "--batches", "1,2", "--text_tokens", 8, "--past", 4, "--steps", 2, "--codes", 12, "--frames", 64,
                "--repeats", 1, "--threads", 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "failed" not in proc.stdout
    rows = [line.split() for line in proc.stdout.splitlines()]
    timed = {}
    for r in rows:
        if len(r) >= 6 and r[0] in ("ar_step", "prefill", "latent", "codes", "diffusion", "univnet", "hifigan"):
            words = 3 if r[0] == "ar_step" else 1  # "ar_step b1 @4": batch and codes decoded before the step
            stage, rest = " ".join(r[:words]), r[words:]
            # the largest difference from torch ("-" for torch itself); for codes, "k/n same"
            timed[stage, rest[0]] = " ".join(rest[-2:]) if rest[-1] == "same" else rest[-1]
    stages = ("ar_step b1 @4", "ar_step b2 @4", "prefill", "latent", "codes", "diffusion", "univnet", "hifigan")
    assert set(timed) == {(s, v) for s in stages for v in ("torch", "ort", "ov-f32")}, proc.stdout
    for (stage, variant), diff in timed.items():
        if variant == "torch":
            continue
        if stage == "codes":  # fp32 graphs draw torch's codes from the same seed, every one of them
            assert diff == "12/12 same", (variant, diff)
        else:
            assert float(diff) < 1e-3, (stage, variant, diff)


def test_bench_floor_measures_the_machine_and_every_stage(tiny_models_dir):
    proc = _run("bench_floor.py", "--models_dir", tiny_models_dir, "--batches", "1,2", "--text_tokens", 8,
                "--context", 4, "--codes", 12, "--frames", 64, "--repeats", 1, "--threads", 1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert "threads 1" in lines[0] and lines[1].startswith("memory read ") and "int8" in lines[1]
    rows = [line for line in lines[3:] if line.strip() and not line.startswith("  ")]
    assert any(line.startswith("  bf16 small steps: ") for line in lines), proc.stdout  # the half row plan
    labels = [(r[:40].strip(), r[40:46].strip()) for r in rows]
    want = [(f"AR step, batch {b}", p) for p in ("fp32", "bf16", "int8") for b in (1, 2)]
    want += [("AR prefill, 8 text tokens", p) for p in ("fp32", "bf16")]
    want += [("AR latent pass, 12 codes", p) for p in ("fp32", "bf16")]
    want += [("guided diffusion forward, 64 frames", p) for p in ("fp32", "bf16")]
    want += [("UnivNet, 64 frames", "fp32")]
    assert labels == want, proc.stdout
    for r in rows:
        seconds, floor, share = r[46:].split()[:3]
        assert float(seconds) > 0 and float(floor) > 0 and share.endswith("%"), r


def test_bench_server_runs_the_load_and_the_soak(tiny_models_dir, tmp_path):
    out = tmp_path / "server.json"
    proc = _run("bench_server.py", "--models_dir", tiny_models_dir, "--clients", 3, "--duration", 4, "--queue_size",
                1, "--soak", 4, "--sample_every", 1, "--json", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "soak: RSS drift (least squares)" in proc.stdout and "run 2: 429 / errors" in proc.stdout
    numbers = json.loads(out.read_text())
    assert [r["errors"] for r in numbers["runs"]] == [0, 0] and numbers["soak"]["summary"]["errors"] == 0
    assert all(r["completed"] > 0 for r in numbers["runs"]) and numbers["soak"]["summary"]["completed"] > 0
    assert numbers["runs"][0]["rejected_429"] > 0  # three clients on a queue of one: some are turned away
    memory = numbers["memory_kib"]
    assert 0 < memory["start"] <= memory["peak"] and numbers["soak"]["drift"]["samples"] >= 4
    assert numbers["health"]["median_s"] > 0 and numbers["health"]["failed"] == 0
