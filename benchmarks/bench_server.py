"""Load check of tortoise-server: N concurrent clients on loopback for a bounded time, then a soak, tiny models.

    python3 benchmarks/bench_server.py --clients 64 --duration 60 --soak 600   # the README's figures
    python3 benchmarks/bench_server.py --clients 4 --duration 45            # writes tiny models to a temp dir
    python3 benchmarks/bench_server.py --models_dir DIR --clients 8 --duration 120 --queue_size 4

Each client sends requests back to back for ``--duration`` seconds, alternating a streamed request
(``stream_format: audio``, pcm, three clips: the time to the first audio byte is measured) and a whole-file request
(wav, one clip). A 429 (queue full) is counted and the client waits the ``Retry-After`` it was given; anything else
that is not a 200 with audio is an error. Reported: requests completed, throughput, p50 / p95 latency of completed
requests, p50 / p95 time to the first streamed byte, 429s, errors, and the server's resident memory (VmRSS) after
a warm-up request, after the run and after a second, equal run (memory that keeps growing run after run is a leak),
plus its peak (VmHWM) and its ``/health`` (the recent median seconds per request).

The soak (``--soak SECONDS``) then sends requests at the rate the engine sustains, as measured by the load runs (the
lower of their completed requests per second, times ``--soak_load``, 0.9 by default), from a few clients on a fixed
schedule (a client behind it sends at once, and the soak still ends on time), and samples the server's resident
memory every ``--sample_every`` seconds: reported are the memory at the start and end of the soak, its peak, and its
drift (the slope of a least-squares line through the samples, in MiB per hour).
Every loop is bounded in time and in count, and all traffic goes to 127.0.0.1. Timings are of the whole system
(HTTP, queue, generation, encoding) on tiny random-weight networks: they measure the server's overhead and behaviour
under load, not Tortoise's speed.
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from tortoise.server.launch import ServerProcess

QUICK = {"num_autoregressive_samples": 2, "diffusion_iterations": 2, "max_mel_tokens": 20}
MAX_REQUESTS_PER_CLIENT = 100_000  # a bound on every client loop besides its time
SOAK_CLIENTS = 4
STREAMED_TEXT = "The first sentence is here. The second one follows. And then a third."
WHOLE_TEXT = "A single sentence for the whole file."


def make_voice(root):
    """One synthetic voice of two tone clips (22.05 kHz)."""
    voice = root / "bench"
    voice.mkdir(parents=True, exist_ok=True)
    for i, f0 in enumerate((180.0, 230.0)):
        t = np.arange(22050 * 3) / 22050
        sf.write(str(voice / f"{i}.wav"), (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), 22050)
    return root


def memory_kib(pid):
    """(VmRSS, VmHWM) of a process in KiB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


class Client(threading.Thread):
    def __init__(self, url, index, stop_at, results):
        super().__init__(daemon=True)
        self.url, self.index, self.stop_at, self.results = url, index, stop_at, results

    def run(self):
        with httpx.Client(base_url=self.url, timeout=600) as http:
            for n in range(MAX_REQUESTS_PER_CLIENT):
                if time.monotonic() >= self.stop_at:
                    break
                streamed = (n + self.index) % 2 == 0
                self.results.append(one_request(http, streamed, seed=1000 * self.index + n))


class Scheduled(threading.Thread):
    """A soak client: takes the next start time of the shared schedule (one request every ``1 / rate`` s), waits
    for it, sends the request; a late request starts at once (the engine then sets the pace)."""

    def __init__(self, url, schedule, stop_at, results):
        super().__init__(daemon=True)
        self.url, self.schedule, self.stop_at, self.results = url, schedule, stop_at, results

    def run(self):
        with httpx.Client(base_url=self.url, timeout=600) as http:
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                n, start = self.schedule.next()
                if start >= self.stop_at or time.monotonic() >= self.stop_at:  # behind schedule: time still ends it
                    break
                time.sleep(max(0.0, start - time.monotonic()))
                self.results.append(one_request(http, n % 2 == 0, seed=7_000_000 + n))


class Schedule:
    def __init__(self, rate, t0):
        self.interval, self.t0, self.n = 1.0 / rate, t0, 0
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            n, self.n = self.n, self.n + 1
        return n, self.t0 + n * self.interval


def one_request(http, streamed, seed):
    body = {"model": "tts-1", "voice": "bench", "seed": seed, **QUICK}
    if streamed:
        body.update(input=STREAMED_TEXT, response_format="pcm", stream_format="audio", text_split="20,40")
    else:
        body.update(input=WHOLE_TEXT, response_format="wav")
    t0 = time.perf_counter()
    first = None
    try:
        with http.stream("POST", "/v1/audio/speech", json=body) as r:
            if r.status_code == 429:
                r.read()
                wait = float(r.headers.get("retry-after", "1"))
                time.sleep(min(wait, 5.0))
                return {"kind": "429"}
            if r.status_code != 200:
                r.read()
                return {"kind": "error", "detail": f"{r.status_code} {r.text[:200]}"}
            size = 0
            for chunk in r.iter_raw():
                if first is None and chunk:
                    first = time.perf_counter() - t0
                size += len(chunk)
        if size == 0:
            return {"kind": "error", "detail": "empty body"}
        return {"kind": "ok", "streamed": streamed, "latency": time.perf_counter() - t0, "ttfb": first}
    except httpx.HTTPError as e:
        return {"kind": "error", "detail": f"{type(e).__name__}: {e}"}


def say(message):
    """Progress of a long run, on stderr (the table goes to stdout)."""
    print(f"bench_server: {message}", file=sys.stderr, flush=True)


def percentile(values, q):
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


def run_load(server, clients, duration):
    results = []
    stop_at = time.monotonic() + duration
    threads = [Client(server.url, i, stop_at, results) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.monotonic() - t0


def run_soak(server, seconds, rate, sample_every):
    """Requests at ``rate`` per second for ``seconds``; the server's RSS sampled every ``sample_every`` seconds."""
    results, samples = [], []
    t0 = time.monotonic()
    stop_at = t0 + seconds
    schedule = Schedule(rate, t0)
    threads = [Scheduled(server.url, schedule, stop_at, results) for _ in range(SOAK_CLIENTS)]
    for t in threads:
        t.start()
    for _ in range(int(seconds / sample_every) + 2):
        samples.append((time.monotonic() - t0, memory_kib(server.pid)[0]))
        if time.monotonic() >= stop_at:
            break
        time.sleep(min(sample_every, max(0.0, stop_at - time.monotonic())))
    for t in threads:
        t.join()
    samples.append((time.monotonic() - t0, memory_kib(server.pid)[0]))
    return results, time.monotonic() - t0, samples


def drift(samples):
    """RSS at the start, the end, the peak (MiB) and the slope of a least-squares line through the samples (MiB/h)."""
    t = np.array([s[0] for s in samples])
    mib = np.array([s[1] for s in samples]) / 1024
    slope = float(np.polyfit(t, mib, 1)[0]) * 3600 if len(samples) > 2 and np.ptp(t) > 0 else float("nan")
    return {"start_mib": float(mib[0]), "end_mib": float(mib[-1]), "peak_mib": float(mib.max()),
            "slope_mib_per_h": slope, "samples": len(samples)}


def summarise(results, wall):
    ok = [r for r in results if r["kind"] == "ok"]
    streamed = [r for r in ok if r["streamed"]]
    errors = [r for r in results if r["kind"] == "error"]
    return {"completed": len(ok), "streamed": len(streamed), "whole": len(ok) - len(streamed),
            "wall_s": wall, "throughput_rps": len(ok) / wall if wall else 0.0,
            "latency_p50_s": percentile([r["latency"] for r in ok], 50),
            "latency_p95_s": percentile([r["latency"] for r in ok], 95),
            "stream_latency_p50_s": percentile([r["latency"] for r in streamed], 50),
            "ttfb_p50_s": percentile([r["ttfb"] for r in streamed], 50),
            "ttfb_p95_s": percentile([r["ttfb"] for r in streamed], 95),
            "rejected_429": sum(r["kind"] == "429" for r in results),
            "errors": len(errors), "error_samples": [r["detail"] for r in errors[:3]]}


def table(args, runs, memory, soak=None):
    rows = [("clients / queue size", f"{args.clients} / {args.queue_size}"),
            ("duration per run", f"{args.duration:.0f} s")]
    for i, s in enumerate(runs, 1):
        rows += [(f"run {i}: requests completed", f"{s['completed']} ({s['streamed']} streamed, {s['whole']} whole)"),
                 (f"run {i}: throughput", f"{s['throughput_rps']:.2f} req/s"),
                 (f"run {i}: latency p50 / p95", f"{s['latency_p50_s']:.2f} s / {s['latency_p95_s']:.2f} s"),
                 (f"run {i}: first streamed byte p50 / p95", f"{s['ttfb_p50_s']:.2f} s / {s['ttfb_p95_s']:.2f} s "
                                                             f"(whole stream p50 {s['stream_latency_p50_s']:.2f} s)"),
                 (f"run {i}: 429 / errors", f"{s['rejected_429']} / {s['errors']}")]
    rows += [("server RSS at start (ready) / after warm-up", f"{memory['start'] / 1024:.0f} MiB / "
                                                              f"{memory['before'] / 1024:.0f} MiB"),
             ("server RSS after run 1 / run 2", f"{memory['after_1'] / 1024:.0f} MiB / "
                                                f"{memory['after_2'] / 1024:.0f} MiB"),
             ("server peak RSS (VmHWM)", f"{memory['peak'] / 1024:.0f} MiB")]
    if soak is not None:
        s, d = soak["summary"], soak["drift"]
        rows += [("soak: duration / target rate", f"{s['wall_s']:.0f} s / {soak['rate']:.3f} req/s"),
                 ("soak: requests completed", f"{s['completed']} ({s['throughput_rps']:.3f} req/s)"),
                 ("soak: latency p50 / p95", f"{s['latency_p50_s']:.2f} s / {s['latency_p95_s']:.2f} s"),
                 ("soak: 429 / errors", f"{s['rejected_429']} / {s['errors']}"),
                 ("soak: RSS start / end / peak", f"{d['start_mib']:.0f} / {d['end_mib']:.0f} / "
                                                  f"{d['peak_mib']:.0f} MiB"),
                 ("soak: RSS drift (least squares)", f"{d['slope_mib_per_h']:+.1f} MiB/h over {d['samples']} "
                                                     "samples")]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'measure'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
    return "\n".join(lines + [f"| {k.ljust(width)} | {v} |" for k, v in rows])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models_dir", default=None, help="checkpoints (default: tiny random-weight models, written now)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--duration", type=float, default=45.0, help="seconds of load per run (two runs)")
    p.add_argument("--queue_size", type=int, default=8)
    p.add_argument("--soak", type=float, default=0.0, help="then seconds of soak at the sustained rate (0: none)")
    p.add_argument("--soak_load", type=float, default=0.9, help="soak rate as a share of run 1's throughput")
    p.add_argument("--sample_every", type=float, default=10.0, help="seconds between RSS samples in the soak")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp:
        tmp = Path(tmp)
        models = args.models_dir
        if models is None:
            from tortoise.utils.make_test_models import write_models
            models = tmp / "models"
            write_models(models, size="tiny", seed=0)
        voices = make_voice(tmp / "voices")
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        server_args = ["--models_dir", str(models), "--voices_dir", str(voices), "--queue_size", str(args.queue_size),
                       "--vocoder", "univnet", "--log_level", "warning"]
        with ServerProcess(server_args, env=env, log=tmp / "server.log") as server:
            memory = {"start": memory_kib(server.pid)[0]}
            with httpx.Client(base_url=server.url, timeout=600) as http:
                warm = one_request(http, True, seed=0)
                if warm["kind"] != "ok":
                    sys.exit(f"warm-up request failed: {warm}")
            memory["before"] = memory_kib(server.pid)[0]
            runs = []
            for n in (1, 2):
                results, wall = run_load(server, args.clients, args.duration)
                runs.append(summarise(results, wall))
                memory[f"after_{n}"], memory["peak"] = memory_kib(server.pid)
                say(f"run {n}: {runs[-1]['completed']} completed, {runs[-1]['rejected_429']} x 429, "
                    f"{runs[-1]['errors']} errors, RSS {memory[f'after_{n}'] / 1024:.0f} MiB")
            status = httpx.get(server.url + "/health").json()
            soak = None
            if args.soak > 0:
                rate = max(min(r["throughput_rps"] for r in runs) * args.soak_load, 1e-3)
                say(f"soak: {args.soak:.0f} s at {rate:.3f} req/s")
                results, wall, samples = run_soak(server, args.soak, rate, args.sample_every)
                soak = {"rate": rate, "summary": summarise(results, wall), "drift": drift(samples),
                        "rss_samples_kib": samples}
                memory["peak"] = memory_kib(server.pid)[1]
                status = httpx.get(server.url + "/health").json()
    print(table(args, runs, memory, soak))
    print(f"server /health: {json.dumps(status)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "memory_kib": memory, "soak": soak,
                                               "health": status}, indent=1))
    failed = [r for r in runs + ([soak["summary"]] if soak else []) if r["errors"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
