"""Reading on Ray: clips per minute with 1 and 2 CPU actors, Ray's per-clip overhead, and what N GPUs would give.

On a local Ray cluster (started here, stopped at the end) with tiny random-weight models (written to a temporary
directory unless --models_dir is given), one voice, ``--clips`` short sentences at tiny settings:

- local: the single-process loop (:func:`tortoise.render.render`, one torch thread): seconds per clip ``T``.
- Ray, 1 and 2 actors (one torch thread each, models loaded before the clock starts): clips per minute, medians of
  ``--repeats`` whole reads (each a fresh output directory).
- overhead ``o``: the round trip of one clip through an actor without rendering (the voice and settings by object
  reference, a clip-sized result back), and the driver's own serial work per clip ``d`` (writing the WAV with its
  record). The model: N actors read ``min(N / (T + o), 1 / (d + o))`` clips per second (the driver's share counted
  pessimistically as the whole round trip); past ``N* = (T + o) / (d + o)`` actors the driver is the limit.

The machine's cores bound the measured scaling (2 actors on 2 shared cores); the N-GPU rows are that model evaluated
with the measured ``o`` and ``d`` and a time per clip ``T`` (the tiny CPU clip measured here, and any ``--clip_seconds``
given, e.g. a full-size clip timed on one GPU with ``tortoise-tts``); they are estimates, not measurements.

    python benchmarks/bench_ray.py --clips 8 --repeats 3
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from timing import cpu_model  # benchmarks/timing.py

SENTENCES = ["The first sentence is short.", "Here comes the second one.", "A third sentence follows it.",
             "Then there is a fourth.", "The fifth is nearly the last.", "And this is the sixth.",
             "A seventh line of text.", "The eighth one closes the book."]


def make_job(models_dir, out, n_clips):
    from tortoise import render
    from tortoise.api import model_identity, preset_options
    opts = preset_options("ultra_fast", num_autoregressive_samples=2, max_mel_tokens=20, diffusion_iterations=2)
    texts = tuple((SENTENCES * (n_clips // len(SENTENCES) + 1))[:n_clips])
    settings = render.RenderSettings(opts, 3, 1, False, model_identity(tts_kwargs(models_dir)))
    return render.RenderJob(texts, (render.Voice("random", identity="random"),), settings, Path(out))


def tts_kwargs(models_dir):
    from tortoise.options import ModelOptions
    return ModelOptions(models_dir=str(models_dir), device="cpu", vocoder="univnet")


def process_cpu_seconds(pid):
    """User + system CPU seconds a process has used (Linux /proc), for the actors' own CPU time."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_local(models_dir, n_clips, repeats, work):
    """Wall and CPU seconds per clip of the single-process loop (medians of whole reads after one warm-up clip), and
    the median time of the driver's write of one clip."""
    import torch

    from tortoise import render
    from tortoise.session import Session
    torch.set_num_threads(1)
    tts = Session.load(tts_kwargs(models_dir))
    render.render(tts, make_job(models_dir, work / "warm", 1))
    walls, cpus = [], []
    for r in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        result = render.render(tts, make_job(models_dir, work / f"local{r}", n_clips))
        walls.append((time.perf_counter() - t) / n_clips)
        cpus.append((time.process_time() - c) / n_clips)
    job = make_job(models_dir, work / "writes", n_clips)
    audio = [render.read_audio(p) for p in result.written if not p.name.endswith("_combined.wav")]
    writes = []
    for task, a in zip(render.plan(job), audio):
        t = time.perf_counter()
        render.write_clip(job, task, [a])
        writes.append(time.perf_counter() - t)
    return statistics.median(walls), statistics.median(cpus), statistics.median(writes), audio[0]


class Echo:
    """An actor that takes what a clip task takes and returns a clip-sized result without rendering."""

    def __init__(self, audio):
        self.audio = audio

    def render(self, voice, text, settings, index):
        return [self.audio.clone()]


def time_overhead(ray, job, audio, calls=50):
    """Median seconds of one actor round trip shaped like a clip task (refs in, a clip's audio out)."""
    actor = ray.remote(Echo).options(num_cpus=1).remote(audio)
    voice, settings = ray.put(job.voices[0]), ray.put(job.settings)
    ray.get(actor.render.remote(voice, "x", settings, 0))
    times = []
    for i in range(calls):
        t = time.perf_counter()
        ray.get(actor.render.remote(voice, job.texts[i % len(job.texts)], settings, i))
        times.append(time.perf_counter() - t)
    ray.kill(actor)
    return statistics.median(times)


def time_ray(ray, models_dir, n_actors, n_clips, repeats, work):
    """Median clips per minute of whole reads on a pool of ``n_actors``, the actors' CPU seconds per clip, and the
    seconds the pool took to start (processes up, models loaded)."""
    from tortoise.distributed.reader import ClipPool, RayOptions
    rates, cpus = [], []
    with ClipPool(ray, tts_kwargs(models_dir), options=RayOptions(actors=n_actors, threads=1)) as pool:
        t = time.perf_counter()
        pool.wait_ready()
        start = time.perf_counter() - t
        pool.read(make_job(models_dir, work / f"warm{n_actors}", n_actors))  # every actor's first clip
        pids = [a.pid for a in pool.actors]
        for r in range(repeats):
            c = sum(process_cpu_seconds(pid) for pid in pids)
            t = time.perf_counter()
            result = pool.read(make_job(models_dir, work / f"ray{n_actors}_{r}", n_clips))
            rates.append(60 * n_clips / (time.perf_counter() - t))
            cpus.append((sum(process_cpu_seconds(pid) for pid in pids) - c) / n_clips)
            assert not result.failed, result.failed
    return statistics.median(rates), statistics.median(cpus), start


def model_rate(n, clip_s, overhead_s, driver_s):
    """Clips per minute of n actors: each clip costs an actor clip_s + overhead_s; the driver handles one clip at a
    time, counted pessimistically as its write plus the whole round trip (driver_s + overhead_s)."""
    return 60 * min(n / (clip_s + overhead_s), 1 / (driver_s + overhead_s))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models_dir", default=None, help="tiny models (default: written to a temporary directory)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--clip_seconds", type=float, action="append", default=[],
                   help="also estimate N GPUs for this time per clip (seconds; repeatable)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models_dir = args.models_dir
        if models_dir is None:
            from tortoise.utils.make_test_models import write_models
            models_dir = work / "models"
            write_models(models_dir, size="tiny", seed=0)
        clip_s, clip_cpu, driver_s, audio = time_local(models_dir, args.clips, args.repeats, work)
        ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            overhead_s = time_overhead(ray, make_job(models_dir, work / "o", args.clips), audio)
            measured = {n: time_ray(ray, models_dir, n, args.clips, args.repeats, work) for n in (1, 2)}
        finally:
            ray.shutdown()
    report(args, clip_s, clip_cpu, driver_s, overhead_s, measured, len(audio) / 24000)
    return 0


def report(args, clip_s, clip_cpu, driver_s, overhead_s, measured, clip_audio_s):
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, shared (load average {os.getloadavg()[0]:.1f} at the end); "
          f"one torch thread per actor; tiny models; {args.clips} clips of {clip_audio_s:.2f} s; "
          f"medians of {args.repeats}")
    print(f"T, time per clip in one process without Ray: {clip_s * 1000:.0f} ms; o, Ray round trip per clip: "
          f"{overhead_s * 1000:.1f} ms; d, the driver's write per clip: {driver_s * 1000:.1f} ms")
    print("\n| run | clips/min measured | clips/min model | CPU s per clip | start (models loaded) |")
    print("|---|---|---|---|---|")
    print(f"| one process, no Ray | {60 / clip_s:.0f} | | {clip_cpu:.3f} | |")
    for n, (rate, cpu, start) in measured.items():
        print(f"| Ray, {n} CPU actor(s) | {rate:.0f} | {model_rate(n, clip_s, overhead_s, driver_s):.0f} | "
              f"{cpu:.3f} | {start:.1f} s |")
    print("\nEstimate for N actors, one per GPU: min(N/(T+o), 1/(d+o)) clips/min; the driver limits at "
          "N* = (T+o)/(d+o)")
    print("| T per clip | N=1 | N=2 | N=4 | N=8 | N=16 | N=64 | N* | Ray's share o/(T+o) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in [clip_s] + args.clip_seconds:
        cells = " | ".join(f"{model_rate(n, t, overhead_s, driver_s):.3g}" for n in (1, 2, 4, 8, 16, 64))
        print(f"| {t:.3g} s | {cells} | {(t + overhead_s) / (driver_s + overhead_s):.0f} | "
              f"{100 * overhead_s / (t + overhead_s):.2g}% |")


if __name__ == "__main__":
    sys.exit(main())
