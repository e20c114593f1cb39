"""Speech server parts without a server: audio formats, streaming encoders, speed, request checks, the engine's
queue and cancellation, the command line's checks."""
import asyncio
import io
import json
import math
import threading
import time
import wave

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from tortoise.progress import Cancelled
from tortoise.server import audio, cli as server_cli, speech
from tortoise.server.engine import Engine, QueueFull
from tortoise.server.errors import APIError

SR = audio.SAMPLE_RATE


def tone(seconds=1.0, f0=440.0):
    t = np.arange(int(SR * seconds)) / SR
    return (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32)


def dominant_hz(x):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * SR / len(x)


# ---------------------------------------------------------------- audio

def ff_decode(data):
    """``data`` decoded by FFmpeg's decoders (PyAV), as a reader such as a browser or a player would: (float mono
    samples, sample rate, FFmpeg's name for the container)."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [frame.to_ndarray().astype(np.float32).reshape(-1) for frame in container.decode(stream)]
        scale = 32768.0 if stream.codec_context.format.name.startswith("s16") else 1.0
        return np.concatenate(frames) / scale, stream.rate, container.format.name


def decoded_length_24k(y, rate):
    return len(y) * SR // rate  # Opus always decodes at 48 kHz


CONTAINERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav"}


def test_every_openai_format_is_written():
    formats = audio.supported_formats()
    assert formats == audio.OPENAI_FORMATS  # PyAV is in the server and test extras: all six
    assert audio.default_format() == "mp3"


@pytest.mark.parametrize("fmt", [f for f in audio.OPENAI_FORMATS if f != "pcm"])
def test_whole_files_decode_to_the_clip(fmt):
    x = tone(0.5)
    y, rate, container = ff_decode(audio.encode(x, fmt))
    assert container == CONTAINERS[fmt]
    if fmt in ("wav", "flac"):  # lossless at 16 bits
        assert rate == SR and len(y) == len(x) and np.abs(y - x).max() < 1e-4
    else:
        assert rate in (SR, 48000) and abs(decoded_length_24k(y, rate) - len(x)) < 0.1 * SR
        assert abs(dominant_hz(y) * rate / SR - 440) < 5


def test_whole_wav_and_mp3_carry_their_exact_length():
    x = tone(1.0)
    y, rate = sf.read(io.BytesIO(audio.encode(x, "wav")), dtype="float32")
    assert rate == SR and len(y) == len(x)
    y, rate, _ = ff_decode(audio.encode(x, "mp3"))
    assert len(y) == len(x)  # the Xing frame written at the end tells the decoder the encoder's padding


def test_pcm_is_raw_int16_and_clipped():
    x = np.array([0.0, 0.5, -0.5, 2.0, -2.0], dtype=np.float32)
    assert np.frombuffer(audio.encode(x, "pcm"), "<i2").tolist() == [0, 16384, -16384, 32767, -32767]


def test_streamed_wav_has_unknown_sizes_and_reads_to_the_end():
    enc = audio.StreamEncoder("wav")
    x = tone(0.3)
    data = enc.write(x[:3000]) + enc.write(x[3000:]) + enc.close()
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff" and data[40:44] == b"\xff\xff\xff\xff"
    y, rate = sf.read(io.BytesIO(data), dtype="float32")
    assert rate == SR and len(y) == len(x) and np.abs(y - x).max() < 1e-4
    with wave.open(io.BytesIO(data)) as w:  # the standard library reads it too
        assert len(w.readframes(10 ** 9)) == 2 * len(x)


def test_streamed_wav_without_audio_is_a_header():
    assert audio.StreamEncoder("wav").close() == audio.wav_stream_header()


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_streamed_formats_leave_chunk_by_chunk_and_decode(fmt):
    enc = audio.StreamEncoder(fmt)
    x = tone(2.0)
    parts = [enc.write(x[i:i + SR // 2]) for i in range(0, len(x), SR // 2)] + [enc.close()]
    assert all(parts[:4]), [len(p) for p in parts]  # every half second of audio sends bytes, not only the end
    y, rate, container = ff_decode(b"".join(parts))
    assert container == CONTAINERS[fmt] and abs(decoded_length_24k(y, rate) - len(x)) < 0.1 * SR
    assert abs(dominant_hz(y) * rate / SR - 440) < 5
    if fmt == "flac":
        assert np.abs(y - x).max() < 1e-4


def test_streamed_flac_starts_as_flac_at_24k():
    first = audio.StreamEncoder("flac").write(tone(0.5))
    assert first[:4] == b"fLaC"
    rate = int.from_bytes(first[18:21], "big") >> 4  # STREAMINFO: 20-bit sample rate
    assert rate == SR


def test_without_pyav_only_wav_and_pcm_and_the_refusal_says_how(monkeypatch):
    monkeypatch.setattr(audio, "has_av", lambda: False)
    audio.supported_formats.cache_clear()
    try:
        assert audio.supported_formats() == ("wav", "pcm") and audio.default_format() == "wav"
        message = refused(body(response_format="aac"), "response_format")
        assert "pip install av" in message
    finally:
        audio.supported_formats.cache_clear()


@pytest.mark.parametrize("speed", [0.25, 0.5, 1.5, 2.0, 4.0])
def test_speed_stretches_time_and_keeps_pitch(speed):
    x = torch.from_numpy(tone(1.0, 330.0))
    y = audio.change_speed(x, speed)
    assert y.shape[0] == round(x.shape[0] / speed) and torch.isfinite(y).all()
    assert abs(dominant_hz(y.numpy()) - 330) < 8  # resampling would move it to 330 * speed
    assert 0.1 < float(y.abs().max()) < 1.0


def test_speed_one_and_tiny_inputs():
    x = torch.from_numpy(tone(0.01))
    assert audio.change_speed(x, 1.0) is x
    assert audio.change_speed(x, 2.0).shape[0] == round(x.shape[0] / 2)
    assert audio.change_speed(torch.zeros(0), 2.0).numel() == 0


# ---------------------------------------------------------------- the request

def body(**kw):
    data = {"model": "tts-1", "input": "Hello there.", "voice": "random", **kw}
    return json.dumps(data).encode()


def refused(raw, param=None):
    with pytest.raises(APIError) as e:
        speech.speech_request(raw)
    assert e.value.status == 400 and "\n" not in e.value.message
    if param:
        assert e.value.param == param, e.value.message
    return e.value.message


def test_models_map_to_presets():
    req = speech.speech_request(body())
    assert req.preset == "fast" and not req.settings.stream and req.settings.options.num_autoregressive_samples == 96
    assert speech.speech_request(body(model="tts-1-hd")).preset == "standard"
    assert speech.speech_request(body(model="ultra_fast")).preset == "ultra_fast"
    stream = speech.speech_request(body(model="stream"))
    assert stream.settings.stream and stream.settings.candidates == 1
    ids = [m[0] for m in speech.models()]
    assert ids[:3] == ["tts-1", "tts-1-hd", "stream"] and "high_quality" in ids


def test_extra_fields_override_the_preset():
    req = speech.speech_request(body(seed=7, candidates=3, candidate=2, temperature=0.5, diffusion_iterations=3,
                                     sampler="ddim", cond_free=False, text_split="15,25",
                                     input="One sentence here. Another sentence there."))
    o = req.settings.options
    assert (req.settings.seed, req.settings.candidates, req.candidate) == (7, 3, 2)
    assert (o.temperature, o.diffusion_iterations, o.sampler, o.cond_free) == (0.5, 3, "ddim", False)
    assert len(req.texts) == 2
    assert speech.speech_request(body(candidate=1)).settings.candidates == 2
    assert speech.speech_request(body(voice={"id": "alice&bob"})).names == ("alice", "bob")
    assert speech.speech_request(body(text_split=[5, 10])).texts == ("Hello", "there.")


def test_defaults():
    req = speech.speech_request(body())
    assert req.response_format == audio.default_format() and req.speed == 1.0 and req.stream_format is None
    assert 0 <= req.settings.seed < 2 ** 32 and req.candidate == 0 and req.voice == "random"


@pytest.mark.parametrize("raw,param,words", [
    (body(input=""), "input", "empty"),
    (body(input="   "), "input", "empty"),
    (body(input="a" * 4097), "input", "4096"),
    (body(input=5), "input", "string"),
    (body(voice=3), "voice", None),
    (body(voice="a,b"), "voice", "one voice"),
    (body(voice="random&alice"), "voice", "random"),
    (body(response_format="ogg"), "response_format", "OpenAI"),
    (body(response_format="m4a"), "response_format", "mp3, opus, aac, flac, wav, pcm"),
    (body(speed=5), "speed", "0.25"),
    (body(speed="fast"), "speed", None),
    (body(seed="x"), "seed", None),
    (body(seed=-1), "seed", "range"),
    (body(stream_format="chunks"), "stream_format", None),
    (body(model="gpt-4o-mini-tts"), "model", "tts-1"),
    (body(temprature=1), "temprature", "unknown field"),
    (body(candidates=200), "candidates", "num_autoregressive_samples"),
    (body(candidates=2, candidate=2), "candidate", "0..1"),
    (body(model="stream", candidates=2), "candidates", "one candidate"),
    (body(top_p=2.0), "top_p", "top_p"),
    (body(sampler="euler"), "sampler", "sampler"),
    (body(cond_free="yes"), "cond_free", None),
    (body(instructions="Speak sadly."), "instructions", "brackets"),
    (body(text_split="big"), "text_split", "DESIRED"),
    (b'{"model": "tts-1", "input": ', None, "not valid JSON"),
    (b"[1, 2]", None, "JSON object"),
    (json.dumps({"input": "x", "voice": "random"}).encode(), "model", "required"),
])
def test_bad_requests_are_one_line_400s(raw, param, words):
    message = refused(raw, param)
    if words:
        assert words in message


def test_voice_mixes_are_spelt_a_and_b_or_a_plus_b():
    assert speech.voice_names("alice&bob") == speech.voice_names("alice+bob") == ("alice", "bob")
    assert speech.voice_names(" alice + bob & carol ") == ("alice", "bob", "carol")
    assert speech.speech_request(body(voice="alice+bob")).names == ("alice", "bob")
    assert "empty part" in refused(body(voice="alice+"), "voice")
    assert "random" in refused(body(voice="random+alice"), "voice")


def test_voice_list_carries_openai_s_list_and_the_voices_clients_read(tmp_path):
    from tortoise.server.voices import describe_voice, list_voices, voice_list_body
    (tmp_path / "alice").mkdir()
    sf.write(str(tmp_path / "alice" / "a.wav"), tone(1.5), SR)
    sf.write(str(tmp_path / "alice" / "b.flac"), tone(0.5), SR)
    listed = voice_list_body(list_voices([tmp_path]))
    assert listed["object"] == "list" and [v["id"] for v in listed["data"]] == ["random", "alice"]
    assert listed["voices"] == [{"id": "random", "name": "random"}, {"id": "alice", "name": "alice"}]
    alice = describe_voice("alice", [tmp_path])
    assert alice["source"] == "user" and alice["type"] == "audio_sample" and alice["latents"] == []
    assert alice["clips"] == [{"file": "a.wav", "seconds": 1.5}, {"file": "b.flac", "seconds": 0.5}]
    assert alice["seconds"] == 2.0 and str(tmp_path) not in json.dumps(alice)  # no server paths
    assert describe_voice("random", [tmp_path])["source"] == "random"
    with pytest.raises(APIError) as e:
        describe_voice("nobody", [tmp_path])
    assert e.value.status == 404 and e.value.code == "voice_not_found"


def test_input_at_the_limit_is_accepted():
    assert speech.speech_request(body(input="word. " * 682 + "abcd")).texts


# ---------------------------------------------------------------- the engine

class FakeTTS:
    """Stands in for the models: the engine only hands it to the job's work."""


def steps(n, pause=0.0, fail_at=None):
    """A job's work: ``n`` stage steps, each reporting progress (where a cancel lands) and yielding its number."""
    def work(tts, progress):
        for i in range(n):
            progress("autoregressive", i, n)
            if i == fail_at:
                raise RuntimeError("boom")
            time.sleep(pause)
            yield i
    return work


def gated(item):
    """A job's work that waits (at most 5 s) for the returned gate, then yields ``item`` -> (gate, work)."""
    gate = threading.Event()

    def work(tts, progress):
        gate.wait(5)
        yield item
    return gate, work


class Loop:
    """An event loop on its own thread, as uvicorn runs one."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def collect(self, job, timeout=10):
        async def run():
            items = []
            while True:
                kind, value = await asyncio.wait_for(job.items.get(), timeout)
                if kind != "item":
                    return items, kind, value
                items.append(value)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout + 1)

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


def ready_engine(queue_size=2):
    engine = Engine(FakeTTS, queue_size)
    engine.start()
    for _ in range(200):
        if engine.ready:
            return engine
        time.sleep(0.01)
    raise AssertionError("engine not ready")


def test_jobs_run_in_order_and_failures_stay_with_their_job(loop):
    engine = ready_engine(queue_size=3)
    a = engine.submit(steps(3, 0.02), loop.loop)
    b = engine.submit(steps(3, fail_at=1), loop.loop)
    c = engine.submit(steps(2), loop.loop)
    assert loop.collect(a) == ([0, 1, 2], "done", None)
    items, kind, error = loop.collect(b)
    assert items == [0] and kind == "error" and str(error) == "boom"
    assert loop.collect(c) == ([0, 1], "done", None)
    status = engine.status()
    assert (status["served"], status["failed"], status["queued"], status["running"]) == (2, 1, 0, 0)
    engine.stop()


def test_full_queue_refuses_with_a_retry_estimate(loop):
    engine = ready_engine(queue_size=1)
    gate, blocked = gated("done")
    running = engine.submit(blocked, loop.loop)
    assert running.started.wait(5)
    waiting = engine.submit(steps(1), loop.loop)
    with pytest.raises(QueueFull) as e:
        engine.submit(steps(1), loop.loop)
    assert 1 <= e.value.retry_after <= 3600
    waiting.cancel()  # a cancelled waiting job frees its place at once
    again = engine.submit(steps(1), loop.loop)
    gate.set()
    assert loop.collect(running)[1] == "done" and loop.collect(again)[1] == "done"
    items, kind, error = loop.collect(waiting)
    assert kind == "error" and isinstance(error, Cancelled)
    engine.stop()


def test_queue_size_zero_serves_one_at_a_time(loop):
    engine = ready_engine(queue_size=0)
    gate, blocked = gated(1)
    first = engine.submit(blocked, loop.loop)
    assert first.started.wait(5)
    with pytest.raises(QueueFull):
        engine.submit(steps(1), loop.loop)
    gate.set()
    assert loop.collect(first)[1] == "done"
    engine.stop()


def test_cancel_and_deadline_stop_at_the_next_progress_call(loop):
    engine = ready_engine()
    job = engine.submit(steps(1000, 0.005), loop.loop)
    assert job.started.wait(5)
    time.sleep(0.05)
    job.cancel("client disconnected")
    items, kind, error = loop.collect(job)
    assert kind == "error" and str(error) == "client disconnected" and 0 < len(items) < 1000
    slow = engine.submit(steps(1000, 0.005), loop.loop, timeout=0.1)
    items, kind, error = loop.collect(slow)
    assert kind == "error" and str(error) == "timeout" and len(items) < 1000
    status = engine.status()
    assert status["cancelled"] == 1 and status["timed_out"] == 1
    engine.stop()


def test_health_reports_depth_and_the_recent_median_and_retry_after_follows_it(loop):
    engine = ready_engine(queue_size=2)
    assert engine.status()["median_s"] is None and engine.status()["recent_jobs"] == 0
    for seconds in (0.05, 0.3, 0.1):  # the median (0.1) ignores the one long job (0.3); a mean would not
        assert loop.collect(engine.submit(steps(1, seconds), loop.loop))[1] == "done"
    status = engine.status()
    assert status["recent_jobs"] == 3 and 0.1 <= status["median_s"] < 0.2
    gate, blocked = gated("x")
    running = engine.submit(blocked, loop.loop)
    assert running.started.wait(5)
    first, second = engine.submit(steps(1), loop.loop), engine.submit(steps(1), loop.loop)
    status = engine.status()
    assert (status["queued"], status["running"], status["queue_depth"]) == (2, 1, 3)
    assert status["estimated_wait_s"] == round(status["median_s"] * 3, 1)
    assert (engine.position(running), engine.position(first), engine.position(second)) == (0, 1, 2)
    assert engine.wait_estimate(2) == round(status["median_s"] * 2, 1)  # the running job and the first
    with pytest.raises(QueueFull) as e:
        engine.submit(steps(1), loop.loop)
    assert e.value.retry_after == math.ceil(status["median_s"] * 2)
    first.cancel()
    engine.submit(steps(1), loop.loop)  # frees its place: the second moves up
    assert engine.position(second) == 1 and engine.position(first) is None
    gate.set()
    assert loop.collect(second)[1] == "done" and engine.position(second) == 0
    engine.stop()


def test_failed_load_is_reported_once(loop):
    seen = []

    def load():
        raise FileNotFoundError("no checkpoints in /nowhere")
    engine = Engine(load, 1, on_fatal=seen.append)
    engine.start()
    engine._thread.join(5)
    assert engine.state == "failed" and len(seen) == 1 and "no checkpoints" in str(seen[0])


# ---------------------------------------------------------------- the command line

def test_host_warning_only_beyond_loopback_without_a_key():
    assert server_cli.host_warning("127.0.0.1", None) is None
    assert server_cli.host_warning("localhost", None) is None
    assert server_cli.host_warning("::1", None) is None
    assert server_cli.host_warning("0.0.0.0", "key") is None
    warning = server_cli.host_warning("0.0.0.0", None)
    assert "without an API key" in warning and "--api_key" in warning and "\n" not in warning


def test_wyoming_warning_only_beyond_loopback():
    assert server_cli.wyoming_warning(None) is None
    assert server_cli.wyoming_warning("tcp://127.0.0.1:10200") is None
    assert server_cli.wyoming_warning("unix:///run/tortoise.sock") is None
    warning = server_cli.wyoming_warning("tcp://0.0.0.0:10200")
    assert "no API key" in warning and "\n" not in warning


@pytest.mark.parametrize("argv,words", [
    (["--queue_size", "-1"], "--queue_size"),
    (["--timeout", "-5"], "--timeout"),
    (["--port", "70000"], "--port"),
    (["--api_key", " "], "--api_key"),
    (["--batch_size", "0"], "--batch_size"),
    (["--nonsense"], "unrecognized"),
    (["--no_http"], "--no_http needs --wyoming"),
    (["--wyoming_options", "{}"], "--wyoming_options needs --wyoming"),
    (["--wyoming", "http://127.0.0.1:10200"], "tcp://HOST:PORT"),
    (["--wyoming", "tcp://127.0.0.1"], "port"),
    (["--wyoming", "tcp://127.0.0.1:10200", "--wyoming_options", "{model: 1}"], "not JSON"),
    (["--wyoming", "tcp://127.0.0.1:10200", "--wyoming_options", "[1]"], "JSON object"),
    (["--wyoming", "tcp://127.0.0.1:10200", "--wyoming_options", '{"temprature": 1}'], "unknown field 'temprature'"),
    (["--wyoming", "tcp://127.0.0.1:10200", "--wyoming_options", '{"model": "tts-9"}'], "unknown model"),
    (["--wyoming", "tcp://127.0.0.1:10200", "--wyoming_options", '{"input": "x"}'], "cannot set input"),
    (["--wyoming", "tcp://127.0.0.1:10200", "--ray"], "not available with --ray"),
])
def test_bad_options_exit_2_with_one_line(argv, words, capsys):
    assert server_cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tortoise-server: error:") and words in err[0]


def test_a_second_voices_dir_must_exist(tmp_path, capsys):
    assert server_cli.main(["--voices_dir", f"{tmp_path / 'new'},{tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_console_script_and_module_entry():
    import subprocess
    import sys
    import tomllib
    from pathlib import Path
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["tortoise-server"] == "tortoise.server:main"
    assert {"fastapi", "uvicorn", "python-multipart"} <= set(project["optional-dependencies"]["server"])
    out = subprocess.run([sys.executable, "-m", "tortoise.server", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--queue_size" in out.stdout and "--models_dir" in out.stdout


def test_openapi_page_describes_the_speech_body_without_dangling_references():
    from tortoise.server.app import ServerConfig, create_app
    app = create_app(ServerConfig(), Engine(FakeTTS))
    spec = json.dumps(app.openapi())
    body = app.openapi()["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"model", "input", "voice", "seed", "candidates", "diffusion_iterations"} <= set(body["properties"])
    assert '"#/$defs/' not in spec and "#/components/schemas/VoiceId" not in spec
