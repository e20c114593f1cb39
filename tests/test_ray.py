"""Reading a book on Ray (tortoise.distributed.reader, ``tortoise-tts --ray``) on a real local Ray cluster started
here (``ray.init(num_cpus=2)``, stopped at the end), with tiny random-weight models and 2 actors: a whole read, the
same audio with 1 actor and with 2 (and as the single-process loop renders it), an actor killed mid-run, and a run
resumed after its driver was killed mid-run."""
import dataclasses
import functools
import io
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray
import soundfile as sf
import torch

from conftest import write_tone
from tortoise import cli, render
from tortoise.distributed import reader
from tortoise.options import ModelOptions
from tortoise.session import Session

SENTENCES = ("The first sentence is short.", "Here comes the second one.", "A third sentence follows it.",
             "Then there is a fourth.", "The fifth is nearly the last.", "And this is the end.")
TEXT = " ".join(SENTENCES)
QUICK = ["--num_autoregressive_samples", "2", "--max_mel_tokens", "20", "--steps", "2", "--vocoder", "univnet",
         "-p", "ultra_fast", "--seed", "3", "--text_split", "20,40"]
ENV = {"HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


tone = functools.partial(write_tone, tremolo=True)  # (path, seconds, f0)


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    (root / "alice").mkdir()
    tone(root / "alice" / "a.wav", 2.0, 220.0)
    tone(root / "alice" / "b.wav", 1.5, 290.0)
    return root


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster of 2 CPUs for this module; its GCS address (for drivers in other processes)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in ENV.items():
            mp.setenv(name, value)
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv("TORTOISE_DEVICE", raising=False)
        info = ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        try:
            yield info.address_info["gcs_address"]
        finally:
            ray.shutdown()


def argv(models_dir, voices, out, *extra):
    return ["--models_dir", str(models_dir), "-V", str(voices), "-v", "alice", "-O", str(out), *QUICK, *extra,
            "--text", TEXT]


def job_for(models_dir, voices, out, mode="new"):
    """The job the command line makes of :func:`argv` (same texts, voice, settings and seed)."""
    args = cli.build_parser().parse_args(argv(models_dir, voices, out))
    texts = cli.split_text(args.text_option, args.text_split)
    job = cli.make_job(args, texts, cli.generation_options(args), cli.load_voice_groups(args), "univnet")
    return render.RenderJob(job.texts, job.voices, job.settings, out, mode)


def tts_kwargs(models_dir):
    """The command line's model options (what the pool's actors get)."""
    args = cli.build_parser().parse_args([*argv(models_dir, ".", "."), "--device", "cpu"])
    return cli.model_options(args, "univnet")


@pytest.fixture(scope="module")
def reference(models_dir, voices, tmp_path_factory):
    """Every clip as the single-process loop renders it (one torch thread, as each test actor has)."""
    out = tmp_path_factory.mktemp("local")
    job = job_for(models_dir, voices, out)
    assert len(job.texts) == len(SENTENCES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = render.render(Session.load(tts_kwargs(models_dir)), job)
    finally:
        torch.set_num_threads(threads)
    assert not result.failed
    return {i: render.read_audio(job.clip_path("alice", i)) for i in range(len(job.texts))}


def clips(out, n=len(SENTENCES)):
    return {i: render.read_audio(out / f"alice_{i:02d}_00.wav") for i in range(n)}


def same_audio(a, b):
    assert a.keys() == b.keys()
    for i in a:
        assert torch.equal(a[i], b[i]), f"clip {i} differs"


def check_finished(out, reference):
    """Every clip is there with its record, the combined file is the clips in text order, nothing half-written."""
    same_audio(clips(out), reference)
    combined = render.read_audio(out / "alice_combined.wav")
    assert torch.equal(combined, torch.cat([reference[i] for i in sorted(reference)]))
    for i in reference:
        record = render.read_record(out / f"alice_{i:02d}_00.wav")
        assert record.seed == 3 + i and record.text == SENTENCES[i] and record.voice == "alice"


def test_ray_without_an_address_starts_a_local_cluster(models_dir, tmp_path):
    """The README's command as a process of its own: ``--ray`` starts a local cluster of its own (``address="local"``,
    so it runs in any order, beside the module's cluster or not), reads and stops it."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "tortoise.cli", "--models_dir", str(models_dir), "-O", str(out),
                           *QUICK, "--ray", "--ray_actors", "1", "--text", "Hello there."],
                          env=dict(os.environ, **ENV), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"Ray: 1 actor\(s\) of \d+ CPU each, on a cluster of \d+ CPU and 0 GPU", done.stdout), done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["random_00_00.wav", "random_combined.wav"]
    assert render.read_record(out / "random_00_00.wav").seed == 3


def test_whole_read_same_audio_with_one_and_two_actors(cluster, models_dir, voices, reference, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    events = []
    with reader.ClipPool(ray, tts_kwargs(models_dir), options=reader.RayOptions(actors=2)) as pool:
        assert len(pool.wait_ready()) == 2
        result = pool.read(job_for(models_dir, voices, two), progress=lambda *e: events.append(e))
        assert min(a.clips for a in pool.actors) >= 1 and sum(a.clips for a in pool.actors) == 6
        assert pool.stats.started == 2 and not pool.stats.died
    assert not result.failed and len(result.written) == 7 and not result.kept
    assert [e for e in events if e[0] == "clips"] == [("clips", n, 6) for n in range(7)]  # the bar counts clips
    check_finished(two, reference)
    assert not [p.name for p in two.iterdir() if p.name.startswith(".")]  # no temporary files left
    with reader.ClipPool(ray, tts_kwargs(models_dir), options=reader.RayOptions(actors=1, threads=1)) as pool:
        assert pool.read(job_for(models_dir, voices, one)).failed == []
    check_finished(one, reference)


def test_actor_killed_mid_run(cluster, models_dir, voices, reference, tmp_path):
    """The actor rendering clip 2 is killed once: the clip is rendered again on another actor, with the same audio.
    Every actor that takes clip 4 is killed: after 1 + retries attempts it is reported as failed, and every other
    clip is finished and written (the voice gets no combined file: a resumed run renders clip 4 and combines)."""
    killed = []

    def kill(actor, task):
        if task.index == 4 or (task.index == 2 and 2 not in killed):
            os.kill(actor.pid, signal.SIGKILL)
            killed.append(task.index)

    options = reader.RayOptions(actors=2, retries=1)
    with reader.ClipPool(ray, tts_kwargs(models_dir), options=options, on_dispatch=kill) as pool:
        pool.wait_ready()
        result = pool.read(job_for(models_dir, voices, tmp_path))
        assert sorted(killed) == [2, 4, 4] and len(pool.stats.died) == 3
        assert sorted(pool.stats.retried) == [("alice", 2, 1), ("alice", 4, 1)]
        assert pool.stats.started >= 4  # a new actor took a dead one's place while work remained
    assert [(label, idx) for label, idx, _ in result.failed] == [("alice", 4)]
    assert "died 2 time(s)" in result.failed[0][2]
    assert not (tmp_path / "alice_04_00.wav").exists() and not (tmp_path / "alice_combined.wav").exists()
    finished = {i: a for i, a in reference.items() if i != 4}
    same_audio({i: render.read_audio(tmp_path / f"alice_{i:02d}_00.wav") for i in finished}, finished)


def test_driver_killed_mid_run_then_resumed(cluster, models_dir, voices, reference, tmp_path, capsys):
    """The command line as a user runs it: ``--ray ADDRESS`` in its own process, killed (SIGKILL) once its first clip
    is on disk; the same command with --skip_existing keeps what was finished and renders only the rest."""
    out = tmp_path / "out"
    env = dict(os.environ, **ENV)
    driver = subprocess.Popen([sys.executable, "-m", "tortoise.cli", *argv(models_dir, voices, out, "-q"),
                               "--ray", cluster, "--ray_actors", "2"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    finished = []
    while not finished and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
        finished = sorted(out.glob("alice_0[0-9]_00.wav")) if out.is_dir() else []
    driver.kill()
    _, err = driver.communicate(timeout=60)
    assert finished and driver.returncode == -signal.SIGKILL, err[-2000:]
    kept = {p: p.stat().st_mtime_ns for p in sorted(out.glob("alice_0[0-9]_00.wav"))}
    assert 0 < len(kept) < len(SENTENCES) and not (out / "alice_combined.wav").exists()

    capsys.readouterr()
    assert cli.main([*argv(models_dir, voices, out, "--skip_existing"), "--ray", cluster, "--ray_actors", "2"]) == 0
    said = capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # finished clips were not rendered again
    assert said.count("Keeping ") == len(kept) and f"kept {len(kept)} earlier clip(s)" in said
    assert said.count("Rendering ") == len(SENTENCES) - len(kept)
    check_finished(out, reference)


def test_ray_flags_are_checked_before_anything_runs(models_dir, voices, tmp_path, capsys):
    for extra, fragment in ((["--ray_actors", "2"], "--ray_actors needs --ray"),
                            (["--ray", "Some words to read."], "is not a cluster address"),
                            (["--ray", "--ray_actors", "0"], "--ray_actors must be at least 1")):
        assert cli.main([*argv(models_dir, voices, tmp_path / "out"), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and fragment in err[0], err
    assert not (tmp_path / "out").exists()


def test_without_ray_installed_one_line_says_what_to_install(models_dir, voices, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    assert cli.main([*argv(models_dir, voices, tmp_path / "out"), "--ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tortoise-tts: error: Ray is not installed (no module ray): pip install 'ray[serve]>=2.47'"]


def test_actor_layout():
    assert reader.actor_layout({"CPU": 8.0}) == (8, {"num_cpus": 1}, 1)
    assert reader.actor_layout({"CPU": 8.0}, actors=2) == (2, {"num_cpus": 4}, 4)
    assert reader.actor_layout({"CPU": 8.0}, actors=2, threads=1) == (2, {"num_cpus": 1}, 1)
    assert reader.actor_layout({"CPU": 16.0, "GPU": 4.0}) == (4, {"num_gpus": 1, "num_cpus": 1}, None)
    assert reader.actor_layout({"CPU": 16.0, "GPU": 2.0}, actors=4) == (4, {"num_gpus": 0.5, "num_cpus": 1}, None)
    assert reader.actor_layout({"CPU": 16.0, "GPU": 2.0}, gpus=False) == (16, {"num_cpus": 1}, 1)
    with pytest.raises(ValueError, match="no GPUs"):
        reader.actor_layout({"CPU": 4.0}, gpus=True)
    assert reader.check_address(None) is None and reader.check_address("auto") == "auto"
    assert reader.check_address("10.0.0.5:6379") == "10.0.0.5:6379"
    assert reader.check_address("ray://head:10001") == "ray://head:10001"


# ---------------------------------------------------------------- serving on Ray

def speech_app(job, models_dir):
    """A minimal speech application, built on a Serve replica (the interface the speech server's app factory fills):
    it loads the tiny models there and renders clip ``index`` of ``job`` on ``POST /speak``, as float32 samples."""
    import threading

    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    tts = Session.load(ModelOptions(models_dir=models_dir, vocoder="univnet"))  # device: TORTOISE_DEVICE=cpu (Serve)
    app, lock, load = FastAPI(), threading.Lock(), {"now": 0, "most": 0}

    @app.get("/whoami")
    def whoami():
        return {"pid": os.getpid(), "device": str(tts.device), "threads": torch.get_num_threads(), **load}

    @app.post("/speak")
    async def speak(request: Request):
        index = (await request.json())["index"]
        with lock:
            load["now"] += 1
            load["most"] = max(load["most"], load["now"])
        try:
            from starlette.concurrency import run_in_threadpool
            audio = await run_in_threadpool(render.render_clip, tts, job.voices[0], job.texts[index], job.settings,
                                            index)
        finally:
            with lock:
                load["now"] -= 1
        return Response(audio[0].numpy().tobytes(), media_type="application/octet-stream")
    return app


def test_speech_server_on_ray_serve(cluster, models_dir, voices, reference, tmp_path):
    """A replica behind Serve's HTTP proxy on 127.0.0.1 builds the app (and its models) itself, renders the same audio
    as one process does, and never gets more than max_ongoing_requests at once; past max_queued_requests Serve
    answers 503. Stopping the server shuts Serve down."""
    import socket
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from ray import cloudpickle

    from tortoise.distributed import serve as ray_serve
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's app factory travels by value
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    options = ray_serve.ServeOptions(replicas=1, max_ongoing_requests=1, max_queued_requests=1, port=port, threads=1)
    stop = threading.Event()
    builder = functools.partial(speech_app, job_for(models_dir, voices, tmp_path), str(models_dir))
    server = threading.Thread(target=ray_serve.run, args=(builder, options), kwargs={"stop": stop})
    server.start()
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.is_alive() and time.monotonic() < deadline, "Serve did not come up"
            try:
                who = httpx.get(url + "/whoami", timeout=5)
                if who.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert who.json()["pid"] != os.getpid() and who.json()["device"] == "cpu" and who.json()["threads"] == 1

        def speak(index):
            return httpx.post(url + "/speak", json={"index": index}, timeout=120)

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(speak, range(4)))
        codes = sorted(a.status_code for a in answers)
        assert codes[0] == 200 and 503 in codes, codes  # one at a time, one waiting, the others refused
        for i, a in enumerate(answers):
            if a.status_code == 200:
                assert torch.equal(torch.from_numpy(np.frombuffer(a.content, dtype=np.float32).copy()), reference[i])
            else:
                assert "backpressure" in a.text, a.text
        assert httpx.get(url + "/whoami", timeout=5).json()["most"] == 1
    finally:
        stop.set()
        server.join(120)
    assert not server.is_alive()
    with pytest.raises(httpx.HTTPError):
        httpx.get(url + "/whoami", timeout=5)


def test_tortoise_server_ray_serves_the_speech_api(cluster, models_dir, voices, tmp_path):
    """``tortoise-server --ray``: the real speech server's application, built on a Serve replica by the server's own
    ``replica_app``; the openai client gets speech through Serve's proxy, /ready and /health answer, and a request
    the server refuses is still OpenAI's 400."""
    import socket
    import threading

    import httpx
    import openai

    from tortoise.distributed import serve as ray_serve
    from tortoise.server import cli as server_cli
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = server_cli.build_parser().parse_args(["--models_dir", str(models_dir), "--voices_dir", str(voices),
                                                 "--port", str(port), "--ray", "--ray_replicas", "1",
                                                 "--vocoder", "univnet"])
    options = dataclasses.replace(ray_serve.options_from_args(args), address=None, threads=1)
    stop = threading.Event()
    server = threading.Thread(target=ray_serve.run, args=(functools.partial(server_cli.replica_app, args), options),
                              kwargs={"stop": stop})
    server.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.is_alive() and time.monotonic() < deadline, "Serve did not come up"
            try:
                if httpx.get(url + "/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        speech = client.audio.speech.create(model="ultra_fast", input="Hello there.", voice="alice",
                                            response_format="wav",
                                            extra_body={"seed": 3, "num_autoregressive_samples": 2,
                                                        "diffusion_iterations": 2, "max_mel_tokens": 20})
        audio, rate = sf.read(io.BytesIO(speech.content))
        assert rate == 24000 and audio.size > 0 and np.isfinite(audio).all()
        with pytest.raises(openai.BadRequestError):
            client.audio.speech.create(model="ultra_fast", input="", voice="alice")
        assert httpx.get(url + "/health", timeout=5).json()["served"] == 1
    finally:
        stop.set()
        server.join(120)
    assert not server.is_alive()


def failing_app():
    raise FileNotFoundError("no autoregressive.pth in /nowhere: pass --models_dir")


def test_speech_server_that_cannot_start_on_ray_says_why_in_one_line(cluster):
    from ray import cloudpickle

    from tortoise.distributed import serve as ray_serve
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with pytest.raises(ray_serve.ServeFailed) as failed:
        ray_serve.start(failing_app, ray_serve.ServeOptions(replicas=1, port=0, threads=1))
    message = str(failed.value)
    assert message == ("the speech server did not start on Ray: FileNotFoundError: no autoregressive.pth in /nowhere: "
                       "pass --models_dir")


def test_server_ray_flags():
    """``tortoise-server``'s Ray flags (added by tortoise.distributed.serve.add_arguments), checked before anything
    starts."""
    import argparse

    from tortoise.distributed import serve as ray_serve
    p = argparse.ArgumentParser()
    ray_serve.add_arguments(p)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9000)
    assert ray_serve.options_from_args(p.parse_args([])) is None
    options = ray_serve.options_from_args(p.parse_args(["--ray", "--ray_replicas", "3", "--max_ongoing_requests", "1"]))
    assert options == ray_serve.ServeOptions(None, 3, 1, -1, "0.0.0.0", 9000)
    assert ray_serve.options_from_args(p.parse_args(["--ray", "ray://head"])).address == "ray://head"
    for argv, fragment in ((["--ray_replicas", "2"], "--ray_replicas needs --ray"),
                           (["--ray", "not an address"], "is not a cluster address"),
                           (["--ray", "--max_ongoing_requests", "0"], "--max_ongoing_requests must be at least 1")):
        with pytest.raises(cli.UsageError, match=fragment):
            ray_serve.options_from_args(p.parse_args(argv))


def test_actors_that_cannot_load_the_models_stop_the_read_in_one_line(cluster, models_dir, voices, tmp_path):
    kwargs = tts_kwargs(models_dir).replace(models_dir=str(tmp_path / "no_models"))
    with reader.ClipPool(ray, kwargs, options=reader.RayOptions(actors=1, threads=1)) as pool:
        with pytest.raises(reader.NoActors, match=r"could load the models: CheckpointError: .*autoregressive\.pth"):
            pool.read(job_for(models_dir, voices, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
