"""tortoise-server end to end: real servers started on 127.0.0.1 with tiny random-weight models, spoken to over real
HTTP by the official ``openai`` client (``client.audio.speech.create``, ``with_streaming_response``) and httpx.

Covered: every OpenAI format (whole and streamed, decoded by FFmpeg's decoders through PyAV), server-sent events (and
the place in the queue of one that waits), the streaming model, speed, extra fields and seeds, the voice lists in
OpenAI's, Open WebUI's and Kokoro-FastAPI's shapes (and ``a+b`` mixes), ``/health``'s queue fields,
bad input (each a one-line 400 in OpenAI's error shape, the server staying up), auth, a full queue answering 429, the
timeout, concurrent clients getting the audio they would get alone, a client that disconnects mid-stream stopping its
generation, a failing generation (non-finite audio is an error, never a success), voice upload with the web UI's
checks, and a restart that keeps uploaded voices. Every server runs with its own HOME and TMPDIR, which stay empty:
nothing is written outside the configured directories.
"""
import base64
import io
import json
import math
import os
import signal
import socket
import threading
import time

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import torch

from tortoise.server import audio
from tortoise.server.launch import ServerProcess

from test_server_units import CONTAINERS, decoded_length_24k, ff_decode

KEY = "test-key-123"
QUICK = {"num_autoregressive_samples": 2, "diffusion_iterations": 2, "max_mel_tokens": 20}
LONG_TEXT = " ".join(f"This is sentence number {i}." for i in range(40))  # 40 clips with text_split 20,40
SLOW = {"num_autoregressive_samples": 4, "diffusion_iterations": 400, "max_mel_tokens": 40}  # seconds a clip
SR = 24000


def tone(seconds, f0, sr=22050):
    t = np.arange(int(sr * seconds)) / sr
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * f0 * t) * (0.6 + 0.4 * np.sin(6 * np.pi * t))).astype(np.float32), sr,
             format="WAV")
    return buf.getvalue()


def make_voices(root):
    for name, f0 in (("alice", 220.0), ("bob", 140.0)):
        (root / name).mkdir(parents=True)
        (root / name / "a.wav").write_bytes(tone(2.0, f0))
        (root / name / "b.wav").write_bytes(tone(1.5, f0 * 1.3))
    (root / "overflow").mkdir()  # latents that overflow the autoregressive model: its generation fails
    torch.save((torch.full((64,), 1e30), torch.zeros(128)), root / "overflow" / "overflow.pth")
    return root


class Sandbox:
    """A server's private HOME and TMPDIR, which must stay empty."""

    def __init__(self, root):
        self.home, self.tmp = root / "home", root / "tmp"
        self.home.mkdir(parents=True)
        self.tmp.mkdir(parents=True)

    def env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORTOISE_")}
        env.update(HOME=str(self.home), TMPDIR=str(self.tmp), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
                   PYTHONDONTWRITEBYTECODE="1")
        return env

    def assert_untouched(self):
        assert list(self.home.rglob("*")) == [] and list(self.tmp.rglob("*")) == []


def start(tmp, models_dir, voices_dir, *extra, name="server", env=None):
    sandbox = Sandbox(tmp / name)
    args = ["--models_dir", str(models_dir), "--voices_dir", str(voices_dir), "--vocoder", "univnet",
            "--log_level", "warning", *extra]
    server = ServerProcess(args, env={**sandbox.env(), **(env or {})}, log=tmp / f"{name}.log").start()
    server.sandbox = sandbox
    return server


def stopped_cleanly(server):
    """SIGTERM ends uvicorn gracefully; it then re-raises the signal, so the exit status is -SIGTERM."""
    code = server.stop()
    assert code in (0, -signal.SIGTERM), server.output()[-2000:]
    assert "Traceback" not in server.output(), server.output()[-3000:]
    server.sandbox.assert_untouched()


def client_for(server, key=KEY, **kw):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120, **kw)


def health(server):
    return httpx.get(server.url + "/health", timeout=10).json()


def wait_for(predicate, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def pcm(data):
    return np.frombuffer(data, "<i2")


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    return make_voices(tmp_path_factory.mktemp("server_voices"))


@pytest.fixture(scope="module")
def server(tiny_models_dir, voices_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    srv = start(tmp, tiny_models_dir, voices_dir, "--api_key", KEY, "--queue_size", "8")
    yield srv
    stopped_cleanly(srv)


@pytest.fixture(scope="module")
def client(server):
    return client_for(server)


def speak(client, text="Hello there, my friend.", voice="alice", fmt="wav", **extra):
    return client.audio.speech.create(model="tts-1", voice=voice, input=text, response_format=fmt,
                                      extra_body={**QUICK, **extra}).content


# ---------------------------------------------------------------- speech

def test_every_openai_format_with_the_openai_client(client):
    assert audio.supported_formats() == audio.OPENAI_FORMATS
    reference = speak(client, fmt="wav", seed=11)
    samples, rate = sf.read(io.BytesIO(reference), dtype="int16")
    assert rate == SR and len(samples) > 1000 and samples.std() > 0
    assert np.array_equal(pcm(speak(client, fmt="pcm", seed=11)), samples)
    for fmt in ("mp3", "opus", "aac", "flac"):
        decoded, rate, container = ff_decode(speak(client, fmt=fmt, seed=11))
        assert container == CONTAINERS[fmt] and abs(decoded_length_24k(decoded, rate) - len(samples)) < 0.1 * SR, fmt
        if fmt == "flac":
            assert np.array_equal(np.round(decoded * 32768).astype(np.int16), samples)


def test_same_seed_same_audio_other_seed_other_audio(client):
    a, b, c = (speak(client, seed=s) for s in (5, 5, 6))
    assert a == b and a != c


def test_headers_name_the_seed_and_preset(server):
    r = httpx.post(server.url + "/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"model": "tts-1-hd", "input": "Hello.", "voice": "random", "response_format": "wav", **QUICK})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert r.headers["x-tortoise-preset"] == "standard" and 0 <= int(r.headers["x-tortoise-seed"]) < 2 ** 32
    assert int(r.headers["content-length"]) == len(r.content)


def test_voice_mixes_and_candidates(client):
    mix = speak(client, voice="alice&bob", seed=2)
    assert mix != speak(client, voice="alice", seed=2)
    best = speak(client, seed=2, candidates=2)
    second = speak(client, seed=2, candidates=2, candidate=1)
    assert best != second and sf.info(io.BytesIO(second)).frames > 0
    assert speak(client, seed=2, candidate=1) == second  # candidate 1 alone renders candidates 0 and 1


def test_the_server_makes_the_command_lines_audio(client, tiny_models_dir, voices_dir, tmp_path):
    """Same text, voice, settings and seed: every candidate of every clip equals the file tortoise-tts writes."""
    from tortoise import cli
    text = "Hello there, my friend. This is the second sentence of this text."
    out = tmp_path / "cli"
    assert cli.main(["--models_dir", str(tiny_models_dir), "-V", str(voices_dir), "-v", "alice", "-O", str(out),
                     "-p", "fast", "--vocoder", "univnet", "--num_autoregressive_samples", "4", "--steps", "2",
                     "--max_mel_tokens", "20", "--candidates", "3", "--seed", "5", "--text_split", "20,40", "-q",
                     text]) == 0
    n_clips = len(list(out.glob("alice_[0-9][0-9]_00.wav")))
    assert n_clips >= 2
    for cand in range(3):
        got = client.audio.speech.create(model="tts-1", voice="alice", input=text, response_format="pcm",
                                         extra_body={**QUICK, "num_autoregressive_samples": 4, "seed": 5,
                                                     "candidates": 3, "candidate": cand, "text_split": "20,40"})
        clips = [sf.read(out / f"alice_{i:02d}_{cand:02d}.wav", dtype="float32")[0] for i in range(n_clips)]
        assert np.array_equal(pcm(got.content), audio.to_int16(np.concatenate(clips))), cand


def test_streamed_audio_equals_the_whole_file(client):
    extra = {**QUICK, "seed": 4, "text_split": "20,40"}
    text = "The first sentence is here. The second one follows. And a third."
    whole = pcm(client.audio.speech.create(model="tts-1", voice="bob", input=text, response_format="pcm",
                                           extra_body=extra).content)
    for fmt in ("pcm", "wav"):
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="bob", input=text, response_format=fmt, stream_format="audio",
                extra_body=extra) as response:
            assert response.headers["x-tortoise-clips"] == "3" and "content-length" not in response.headers
            data = b"".join(response.iter_bytes())
        streamed = pcm(data) if fmt == "pcm" else sf.read(io.BytesIO(data), dtype="int16")[0]
        assert np.array_equal(streamed, whole), fmt


def test_every_streamed_format_decodes(client):
    text = "One sentence. Two sentences."
    extra = {**QUICK, "seed": 4, "text_split": "10,20"}
    whole = pcm(client.audio.speech.create(model="tts-1", voice="bob", input=text, response_format="pcm",
                                           extra_body=extra).content)
    for fmt in ("mp3", "opus", "aac", "flac"):
        with client.audio.speech.with_streaming_response.create(
                model="tts-1", voice="bob", input=text, response_format=fmt, stream_format="audio",
                extra_body=extra) as response:
            assert response.headers["content-type"] == audio.CONTENT_TYPES[fmt]
            data = response.read()
        decoded, rate, container = ff_decode(data)
        assert container == CONTAINERS[fmt] and abs(decoded_length_24k(decoded, rate) - len(whole)) < 0.1 * SR, fmt


def sse_events(response):
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: "):]))
        else:
            assert line == "", line  # OpenAI's speech events are data lines only
    return events


def test_sse_carries_base64_chunks_then_done(client):
    extra = {**QUICK, "seed": 8, "text_split": "20,40"}
    text = "The first sentence is here. The second one follows."
    whole = client.audio.speech.create(model="tts-1", voice="alice", input=text, response_format="pcm",
                                       extra_body=extra).content
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alice", input=text, response_format="pcm", stream_format="sse",
            extra_body=extra) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)
    deltas, done = events[:-1], events[-1]
    assert len(deltas) == 2 and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == whole
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] > 5 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_stream_model_sends_audio_within_a_clip(client):
    with client.audio.speech.with_streaming_response.create(
            model="stream", voice="alice", input="Hello there, this is the streaming path.", response_format="pcm",
            stream_format="sse", extra_body={"seed": 1, "max_mel_tokens": 150}) as response:
        events = sse_events(response)
    deltas = [e for e in events if e["type"] == "speech.audio.delta"]
    assert len(deltas) >= 2 and events[-1]["type"] == "speech.audio.done"
    audio_bytes = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    assert len(audio_bytes) > 2 * 60 * 1000  # at least the first 60 codes' worth (~1100 samples per code)


def test_speed_is_a_time_stretch(client):
    normal = sf.read(io.BytesIO(speak(client, seed=9)), dtype="float32")[0]
    for speed in (2.0, 0.5):
        r = client.audio.speech.create(model="tts-1", voice="alice", input="Hello there, my friend.",
                                       response_format="wav", speed=speed, extra_body={**QUICK, "seed": 9})
        stretched = sf.read(io.BytesIO(r.content), dtype="float32")[0]
        assert len(stretched) == round(len(normal) / speed)


# ---------------------------------------------------------------- bad input and failures

BAD = [
    ({"input": ""}, "input", "empty"),
    ({"voice": "nobody"}, "voice", "unknown voice"),
    ({"voice": "../alice"}, "voice", "invalid voice name"),
    ({"response_format": "ogg"}, "response_format", "use one of mp3, opus, aac, flac, wav, pcm"),
    ({"input": "x" * 4097}, "input", "4096"),
    ({"input": 42}, "input", "string"),
    ({"speed": "fast"}, "speed", None),
    ({"speed": 10}, "speed", "0.25"),
    ({"seed": "x"}, "seed", None),
    ({"model": "nope"}, "model", "tts-1"),
    ({"temprature": 0.5}, "temprature", "unknown field"),
    ({"diffusion_iterations": 0}, "diffusion_iterations", "1..4000"),
]


@pytest.mark.parametrize("change,param,words", BAD)
def test_bad_input_is_a_400_in_openai_shape(server, change, param, words):
    body = {"model": "tts-1", "input": "Hello.", "voice": "alice", **QUICK, **change}
    r = httpx.post(server.url + "/v1/audio/speech", json=body, headers={"Authorization": f"Bearer {KEY}"},
                   timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert error["param"] == param and "\n" not in error["message"]
    if words:
        assert words in error["message"]


@pytest.mark.parametrize("raw", [b'{"model": "tts-1", "input": "Hi', b"[]", b"", b"\xff\xfe"])
def test_malformed_bodies(server, raw):
    r = httpx.post(server.url + "/v1/audio/speech", content=raw, timeout=30,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_openai_client_raises_with_the_message(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice="nobody", input="Hello.")
    assert e.value.status_code == 400 and "unknown voice 'nobody'" in e.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.get("/nothing/here", cast_to=object)


def test_a_failing_generation_is_an_error_and_the_server_stays_up(server, client):
    before = health(server)
    for stream_format in (None, "audio", "sse"):
        r = httpx.post(server.url + "/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                       json={"model": "tts-1", "input": "Hello.", "voice": "overflow", "response_format": "wav",
                             **({"stream_format": stream_format} if stream_format else {}), **QUICK})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "\n" not in r.json()["error"]["message"]
    assert health(server)["failed"] == before["failed"] + 3
    assert sf.info(io.BytesIO(speak(client))).frames > 0


# ---------------------------------------------------------------- auth and listings

def test_auth(server):
    url = server.url + "/v1/audio/speech"
    body = {"model": "tts-1", "input": "Hello.", "voice": "alice", **QUICK}
    missing = httpx.post(url, json=body, timeout=30)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/v1/models", timeout=30).status_code == 401
    assert httpx.get(server.url + "/v1/audio/voices", timeout=30).status_code == 401
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200  # liveness needs no key
    assert httpx.get(server.url + "/ready", timeout=30).json()["status"] == "ready"
    with pytest.raises(openai.AuthenticationError):
        client_for(server, key="wrong").audio.speech.create(model="tts-1", voice="alice", input="Hi.")


def test_models_and_voices_listings(client, server):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert ids[:3] == ["tts-1", "tts-1-hd", "stream"] and "ultra_fast" in ids
    r = httpx.get(server.url + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert [v["id"] for v in r["data"]][:3] == ["random", "alice", "bob"]
    assert {v["type"] for v in r["data"]} == {"random", "audio_sample", "latents"}
    assert {v["source"] for v in r["data"]} == {"random", "user"}  # the original voices are not fetched here
    with pytest.raises(openai.BadRequestError) as e:
        client.audio.speech.create(model="tts-1", voice="tom", input="Hello.")
    assert "original Tortoise voices" in e.value.body["message"] and "tortoise-voices fetch" in e.value.body["message"]


def test_voice_list_shapes_that_open_webui_and_kokoro_clients_read(server):
    """Open WebUI reads ``GET {base}/audio/voices`` as ``{"voices": [{"id", "name"}]}`` and ``GET {base}/audio/models``
    as ``{"models": [{"id"}]}``; Kokoro-FastAPI's clients mix voices as ``a+b``."""
    auth = {"Authorization": f"Bearer {KEY}"}
    listed = httpx.get(server.url + "/v1/audio/voices", headers=auth, timeout=30).json()
    assert listed["voices"] == [{"id": v["id"], "name": v["name"]} for v in listed["data"]]
    assert {"random", "alice", "bob"} <= {v["id"] for v in listed["voices"]}
    models = httpx.get(server.url + "/v1/audio/models", headers=auth, timeout=30).json()["models"]
    assert [m["id"] for m in models][:3] == ["tts-1", "tts-1-hd", "stream"]
    alice = httpx.get(server.url + "/v1/audio/voices/alice", headers=auth, timeout=30).json()
    assert alice["id"] == "alice" and alice["source"] == "user" and [c["file"] for c in alice["clips"]] == [
        "a.wav", "b.wav"]
    assert [c["seconds"] for c in alice["clips"]] == [2.0, 1.5] and alice["seconds"] == 3.5
    overflow = httpx.get(server.url + "/v1/audio/voices/overflow", headers=auth, timeout=30).json()
    assert overflow["type"] == "latents" and overflow["latents"] == ["overflow.pth"] and overflow["clips"] == []
    missing = httpx.get(server.url + "/v1/audio/voices/nobody", headers=auth, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "voice_not_found"
    body = {"model": "tts-1", "input": "Hello there.", "response_format": "pcm", "seed": 3, **QUICK}
    plus, amp = (httpx.post(server.url + "/v1/audio/speech", headers=auth, timeout=60, json={**body, "voice": v})
                 for v in ("alice+bob", "alice&bob"))
    assert plus.status_code == 200 and plus.content == amp.content


def test_health_reports_the_queue_and_the_recent_median(server, client):
    speak(client)
    h = health(server)
    assert h["status"] == "ok" and h["queue_depth"] == h["queued"] + h["running"]
    assert h["recent_jobs"] >= 1 and h["median_s"] > 0 and h["estimated_wait_s"] >= 0


# ---------------------------------------------------------------- concurrency, disconnects

def test_concurrent_clients_get_what_they_would_get_alone(server, client):
    seeds = [21, 22, 23, 24]
    results, errors = {}, []

    def one(seed):
        try:
            results[seed] = speak(client_for(server), text="Concurrent clients are served in order.", seed=seed)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)
    threads = [threading.Thread(target=one, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors and sorted(results) == seeds
    for seed in seeds:
        assert speak(client, text="Concurrent clients are served in order.", seed=seed) == results[seed]


def test_a_client_that_disconnects_mid_stream_stops_its_generation(server, client):
    before = health(server)
    body = {"model": "tts-1", "input": LONG_TEXT, "voice": "alice", "response_format": "pcm", "stream_format": "audio",
            "text_split": "20,40", **QUICK, "diffusion_iterations": 50}
    with httpx.stream("POST", server.url + "/v1/audio/speech", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.headers["x-tortoise-clips"] == "40"
        chunks = response.iter_raw()
        assert next(chunks)
    after = wait_for(lambda: (h := health(server))["running"] == 0 and h["cancelled"] > before["cancelled"] and h)
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"]
    assert sf.info(io.BytesIO(speak(client))).frames > 0  # and the next request is served


# ---------------------------------------------------------------- queue, timeout, uploads off

@pytest.fixture(scope="module")
def small_server(tiny_models_dir, voices_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("small_server")
    srv = start(tmp, tiny_models_dir, voices_dir, "--queue_size", "1", "--timeout", "5", "--no_upload",
                name="small")
    yield srv
    stopped_cleanly(srv)


def raw_post(server, body):
    """Send a speech request on a socket of our own and read nothing: closing the socket is a client going away."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def test_full_queue_answers_429_with_retry_after(small_server):
    c = client_for(small_server, key="unused")  # no key configured: any key (or none) is accepted
    speak(c)  # warm
    before = health(small_server)
    running = raw_post(small_server, {"model": "tts-1", "input": LONG_TEXT, "voice": "alice", "text_split": "20,40",
                                      **SLOW})
    try:
        wait_for(lambda: health(small_server)["running"] == 1)
        waiting = {}
        t = threading.Thread(target=lambda: waiting.setdefault("r", speak(client_for(small_server, key="x"))))
        t.start()
        wait_for(lambda: health(small_server)["queued"] == 1)
        r = httpx.post(small_server.url + "/v1/audio/speech", timeout=30,
                       json={"model": "tts-1", "input": "Hi.", "voice": "alice", **QUICK})
        median = health(small_server)["median_s"]
        assert r.status_code == 429 and int(r.headers["retry-after"]) == max(1, math.ceil(median))  # 1 waiting
        assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "queue_full"
        with pytest.raises(openai.RateLimitError):
            speak(c)
    finally:
        running.close()  # the client of the long request goes away while it waits: its job is cancelled
    t.join(60)  # and the waiting request is served
    assert sf.info(io.BytesIO(waiting["r"])).frames > 0
    after = health(small_server)
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"] + 1


def test_a_waiting_sse_request_hears_its_place_in_the_queue(small_server):
    """While a long request runs, an SSE request waits: its stream opens at once with speech.queued events (place 1,
    the likely wait), then carries its audio when its turn comes."""
    c = client_for(small_server, key="unused")
    speak(c)  # a served request: the median exists
    running = raw_post(small_server, {"model": "tts-1", "input": LONG_TEXT, "voice": "alice", "text_split": "20,40",
                                      **SLOW})
    body = {"model": "tts-1", "input": "Hello there.", "voice": "bob", "response_format": "pcm",
            "stream_format": "sse", "seed": 5, **QUICK}
    try:
        wait_for(lambda: health(small_server)["running"] == 1)
        with httpx.stream("POST", small_server.url + "/v1/audio/speech", json=body, timeout=60) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = json.loads(next(line for line in lines if line.startswith("data: "))[len("data: "):])
            assert first["type"] == "speech.queued" and first["position"] == 1
            assert first["estimated_wait_s"] == round(health(small_server)["median_s"], 1)
            running.close()  # the long request's client leaves: the waiting one runs
            rest = [json.loads(line[len("data: "):]) for line in lines if line.startswith("data: ")]
    finally:
        running.close()
    deltas = [e for e in rest if e["type"] == "speech.audio.delta"]
    assert deltas and rest[-1]["type"] == "speech.audio.done"
    assert {e["type"] for e in rest} <= {"speech.queued", "speech.audio.delta", "speech.audio.done"}
    alone = httpx.post(small_server.url + "/v1/audio/speech", json={**body, "stream_format": None}, timeout=60)
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == alone.content


def test_timeout_is_a_504_and_the_server_stays_up(small_server):
    before = health(small_server)["timed_out"]
    t0 = time.monotonic()
    r = httpx.post(small_server.url + "/v1/audio/speech", timeout=60,
                   json={"model": "tts-1", "input": LONG_TEXT, "voice": "alice", "text_split": "20,40", **SLOW})
    assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
    assert 4.5 < time.monotonic() - t0 < 30
    wait_for(lambda: health(small_server)["timed_out"] == before + 1)
    assert sf.info(io.BytesIO(speak(client_for(small_server, key="x")))).frames > 0


def test_a_failure_mid_stream_cuts_audio_and_ends_sse_with_an_error(small_server):
    """The timeout lands after the first clips were sent: the status is already 200, so the audio stream is cut
    (never completed as if the audio were whole) and the event stream ends with OpenAI's error event."""
    body = {"model": "tts-1", "input": LONG_TEXT, "voice": "alice", "response_format": "pcm", "text_split": "20,40",
            **QUICK, "diffusion_iterations": 60}
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream("POST", small_server.url + "/v1/audio/speech", json={**body, "stream_format": "audio"},
                          timeout=60) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                received.append(chunk)
    assert received
    with httpx.stream("POST", small_server.url + "/v1/audio/speech", json={**body, "stream_format": "sse"},
                      timeout=60) as response:
        events = sse_events(response)
    assert events[0]["type"] == "speech.audio.delta" and events[-1]["type"] == "error"
    assert events[-1]["error"]["code"] == "timeout" and not any(e["type"] == "speech.audio.done" for e in events)


def test_uploads_can_be_turned_off(small_server):
    r = httpx.post(small_server.url + "/v1/audio/voices", data={"name": "x"},
                   files={"audio_sample": ("a.wav", tone(2.0, 200.0), "audio/wav")}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "uploads_disabled"


# ---------------------------------------------------------------- non-finite audio, uploads, restart

def test_non_finite_audio_is_an_error_never_a_success(server, client):
    """Diffusion noise scaled by 1e38 overflows the mel: the pipeline's finiteness check fails the request."""
    for stream_format in (None, "audio", "sse"):
        r = httpx.post(server.url + "/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                       json={"model": "tts-1", "input": "Hello.", "voice": "alice", "response_format": "pcm",
                             "diffusion_temperature": 1e38, **({"stream_format": stream_format} if stream_format
                                                               else {}), **QUICK})
        assert r.status_code == 500 and r.json()["error"]["code"] == "non_finite_audio", r.text
        assert "NaN or infinite" in r.json()["error"]["message"]
    assert sf.info(io.BytesIO(speak(client))).frames > 0


def upload(server, name, clips, **fields):
    files = [("audio_sample", (n, data, "audio/wav")) for n, data in clips]
    return httpx.post(server.url + "/v1/audio/voices", data={"name": name, **fields}, files=files, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"})


def test_voice_upload_with_the_web_uis_checks(server, client, voices_dir):
    made = client.audio.voices.create(name="carol ann", audio_sample=("take 1.wav", tone(2.0, 180.0), "audio/wav"),
                                      consent="recorded with permission")
    assert made.id == "carol_ann" and made.object == "audio.voice" and made.type == "audio_sample"
    with pytest.raises(openai.ConflictError):  # never overwritten
        client.audio.voices.create(name="carol ann", audio_sample=("x.wav", tone(2.0, 190.0), "audio/wav"),
                                   consent="recorded with permission")
    added = upload(server, "carol_ann", [("take 1.wav", tone(1.5, 200.0))], add_to_existing="true")
    assert added.status_code == 201 and added.json()["files"] == ["take_1_1.wav"]
    assert sorted(p.name for p in (voices_dir / "carol_ann").iterdir()) == ["take_1.wav", "take_1_1.wav"]
    bad = upload(server, "dave", [("notes.wav", b"not audio"), ("short.wav", tone(0.2, 200.0)),
                                  ("doc.pdf", tone(2.0, 200.0))])
    error = bad.json()["error"]["message"]
    assert bad.status_code == 400 and "\n" not in error
    assert "notes.wav: this is not an audio file" in error and "short.wav" in error
    assert "doc.pdf: not an audio clip" in error
    assert not (voices_dir / "dave").exists()
    assert upload(server, "random", [("a.wav", tone(2.0, 200.0))]).status_code == 400  # reserved by the syntax
    assert upload(server, "...", [("a.wav", tone(2.0, 200.0))]).status_code == 400  # no safe name left
    not_multipart = httpx.post(server.url + "/v1/audio/voices", json={"name": "x"}, timeout=30,
                               headers={"Authorization": f"Bearer {KEY}"})
    assert not_multipart.status_code == 400 and not_multipart.json()["error"]["code"] == "invalid_content_type"
    big = upload(server, "eve", [("big.wav", tone(2.0, 200.0) + bytes(2 ** 20))])  # over 1 MB: stays in memory
    assert big.status_code == 201
    listed = httpx.get(server.url + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert {"carol_ann", "eve"} <= {v["id"] for v in listed.json()["data"]}


def test_uploaded_voices_survive_a_restart(server, client, tiny_models_dir, voices_dir, tmp_path):
    if not (voices_dir / "carol_ann").is_dir():
        client.audio.voices.create(name="carol ann", audio_sample=("take 1.wav", tone(2.0, 180.0), "audio/wav"),
                                   consent="recorded with permission")
    before = speak(client, voice="carol_ann", seed=31)
    again = start(tmp_path, tiny_models_dir, voices_dir, name="restarted")
    try:
        c = client_for(again, key="unused")
        listed = httpx.get(again.url + "/v1/audio/voices", timeout=30).json()["data"]
        assert "carol_ann" in [v["id"] for v in listed]
        assert speak(c, voice="carol_ann", seed=31) == before
    finally:
        stopped_cleanly(again)


def test_models_that_fail_to_load_stop_the_server_with_one_line(tmp_path):
    sandbox = Sandbox(tmp_path)
    server = ServerProcess(["--models_dir", str(tmp_path / "no_models")], env=sandbox.env(), log=tmp_path / "log",
                           ready_timeout=120)
    with pytest.raises(RuntimeError, match="exited with 1"):
        server.start()
    errors = [line for line in server.output().splitlines() if line.startswith("tortoise-server: error:")]
    assert len(errors) == 1 and "could not be loaded" in errors[0], server.output()
    assert "Traceback" not in server.output()
