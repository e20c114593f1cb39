"""tortoise-server's Wyoming protocol end to end: real servers on 127.0.0.1 (tiny random-weight models), spoken to over
real TCP connections by the ``wyoming`` package's own client (``AsyncTcpClient``), the way Home Assistant does.

Covered: ``describe`` (the user voices and the original voices of a voices cache in the layout ``tortoise-voices
fetch`` writes), ``synthesize`` streamed clip by clip and equal to the HTTP API's audio for the same fields, the
streaming-synthesis events, bad input (one-line ``error`` events, the connection and server staying up), a failing
generation, a client that disconnects mid-stream, two clients at once, the HTTP and Wyoming requests sharing one
queue, and the Wyoming server alone (``--no_http``).
"""
import asyncio
import json
import signal
import socket
import struct
import subprocess
import sys
import time

import httpx
import numpy as np
import openai
import pytest
import torch
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import async_read_event, async_write_event
from wyoming.info import Describe, Info
from wyoming.tts import (Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped,
                         SynthesizeVoice)

from tortoise.server.launch import free_port

from test_server import LONG_TEXT, QUICK, Sandbox, health, make_voices, start, stopped_cleanly, tone, wait_for
from test_server_units import ff_decode

SETTINGS = {**QUICK, "seed": 17, "text_split": "20,40"}
TEXT = "The first sentence is here. The second one follows."


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    return make_voices(tmp_path_factory.mktemp("wyoming_voices"))


@pytest.fixture(scope="module")
def voices_cache(tmp_path_factory):
    """A voices cache holding one original voice as ``tortoise-voices fetch`` lays them out (marker written last)."""
    cache = tmp_path_factory.mktemp("voices_cache")
    (cache / "original" / "tom").mkdir(parents=True)
    (cache / "original" / "tom" / "1.wav").write_bytes(tone(2.0, 120.0))
    (cache / "original" / ".fetched.json").write_text(json.dumps({"source": "test"}))
    return cache


@pytest.fixture(scope="module")
def server(tiny_models_dir, voices_dir, voices_cache, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wyoming_server")
    port = free_port()
    srv = start(tmp, tiny_models_dir, voices_dir, "--wyoming", f"tcp://127.0.0.1:{port}",
                "--wyoming_options", json.dumps({"model": "tts-1", "voice": "alice", **SETTINGS}),
                env={"TORTOISE_VOICES_DIR": str(voices_cache)})
    srv.wyoming_port = port
    yield srv
    stopped_cleanly(srv)


def run(coro, timeout=300):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client(server):
    return AsyncTcpClient("127.0.0.1", server.wyoming_port)


async def answer(conn, until=("audio-stop", "error")):
    """Events up to and including the first of type ``until``."""
    events = []
    while True:
        event = await conn.read_event()
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        events.append(event)
        if event.type in until:
            return events


def pcm_of(events):
    """The 16-bit samples of an answer, checking its shape: audio-start, audio-chunks in its format, audio-stop."""
    assert events[0].type == "audio-start" and events[-1].type == "audio-stop", [e.type for e in events]
    start_ = AudioStart.from_event(events[0])
    assert (start_.rate, start_.width, start_.channels) == (24000, 2, 1)
    chunks = [AudioChunk.from_event(e) for e in events[1:-1]]
    assert chunks and all(e.type == "audio-chunk" for e in events[1:-1])
    assert all((c.rate, c.width, c.channels) == (24000, 2, 1) for c in chunks)
    return np.frombuffer(b"".join(c.audio for c in chunks), "<i2")


def http_pcm(server, text, voice="alice", **extra):
    r = httpx.post(server.url + "/v1/audio/speech", timeout=120,
                   json={"model": "tts-1", "input": text, "voice": voice, "response_format": "pcm", **SETTINGS,
                         **extra})
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, "<i2")


async def synthesize(server, text, voice=None):
    async with client(server) as conn:
        await conn.write_event(Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event())
        return await answer(conn)


# ---------------------------------------------------------------- describe and speak

def test_describe_lists_the_user_and_the_original_voices(server):
    async def describe():
        async with client(server) as conn:
            await conn.write_event(Describe().event())
            return Info.from_event((await answer(conn, until=("info",)))[-1])
    info = run(describe())
    assert len(info.tts) == 1
    program = info.tts[0]
    assert program.name == "tortoise" and program.installed and program.supports_synthesize_streaming
    voices = {v.name: v for v in program.voices}
    assert list(voices)[:1] == ["random"] and {"alice", "bob", "overflow", "tom"} <= set(voices)
    assert "user voice" in voices["alice"].description and "original voice" in voices["tom"].description
    assert all(v.languages == ["en"] for v in program.voices)


def test_synthesize_sends_each_clip_as_it_is_made_and_equals_the_http_audio(server):
    before = health(server)["served"]
    events = run(synthesize(server, TEXT))  # no voice named: --wyoming_options' voice, alice
    assert np.array_equal(pcm_of(events), http_pcm(server, TEXT))
    assert np.array_equal(pcm_of(run(synthesize(server, TEXT, "bob"))), http_pcm(server, TEXT, "bob"))
    mix = pcm_of(run(synthesize(server, TEXT, "alice+bob")))
    assert np.array_equal(mix, http_pcm(server, TEXT, "alice&bob"))
    assert health(server)["served"] == before + 6  # one queue, one engine, for both front ends


def test_the_streaming_synthesis_events(server):
    """Text arrives in pieces (as from a language model); the copy ``synthesize`` sent for older servers is ignored:
    one answer, then synthesize-stopped."""
    pieces = ["The first sent", "ence is here. The second ", "one follows."]

    async def stream():
        async with client(server) as conn:
            await conn.write_event(SynthesizeStart(voice=SynthesizeVoice(name="bob")).event())
            for piece in pieces:
                await conn.write_event(SynthesizeChunk(text=piece).event())
            await conn.write_event(Synthesize(text="".join(pieces), voice=SynthesizeVoice(name="bob")).event())
            await conn.write_event(SynthesizeStop().event())
            return await answer(conn, until=("synthesize-stopped", "error"))
    events = run(stream())
    assert SynthesizeStopped.is_type(events[-1].type)
    assert [e.type for e in events].count("audio-start") == 1
    assert np.array_equal(pcm_of(events[:-1]), http_pcm(server, "".join(pieces), "bob"))


def test_every_kind_of_client_gets_speech_from_one_server(server):
    """The issue's finish line: the openai client, an Open WebUI-style client (voices from ``{"voices": [...]}``), a
    Kokoro-style client (an ``a+b`` mix, mp3) and a Wyoming client, all against the one running server."""
    openai_client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
    spoken = openai_client.audio.speech.create(model="tts-1", voice="alice", input=TEXT, response_format="aac",
                                               extra_body=SETTINGS).content
    assert ff_decode(spoken)[2] == "aac"
    listed = httpx.get(server.url + "/v1/audio/voices", timeout=30).json()["voices"]  # Open WebUI's reading
    webui_voice = {v["id"]: v["name"] for v in listed}["bob"]
    webui = httpx.post(server.url + "/v1/audio/speech", timeout=120,
                       json={"model": "tts-1", "input": TEXT, "voice": webui_voice, **SETTINGS})
    assert webui.status_code == 200 and ff_decode(webui.content)[2] == "mp3"  # OpenAI's default format
    kokoro = httpx.post(server.url + "/v1/audio/speech", timeout=120,
                        json={"model": "tts-1", "input": TEXT, "voice": "alice+bob", "response_format": "mp3",
                              **SETTINGS})
    assert kokoro.status_code == 200 and ff_decode(kokoro.content)[2] == "mp3"
    assert np.array_equal(pcm_of(run(synthesize(server, TEXT, "alice"))), http_pcm(server, TEXT, "alice"))


# ---------------------------------------------------------------- bad input, failures, disconnects

def test_bad_requests_are_one_line_error_events_and_the_connection_stays(server):
    async def session():
        async with client(server) as conn:
            errors = []
            for text, voice in (("Hello.", "nobody"), ("Hello.", "../alice"), ("   ", None), ("x" * 4097, None),
                                ("Hello.", "random&alice")):
                await conn.write_event(Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice
                                                  else None).event())
                errors.append((await answer(conn))[-1])
            await conn.write_event(SynthesizeChunk(text="no stream").event())
            errors.append((await answer(conn))[-1])
            await conn.write_event(Synthesize(text=TEXT).event())  # the same connection still speaks
            return errors, await answer(conn)
    errors, good = run(session())
    assert all(Error.is_type(e.type) for e in errors), [e.type for e in errors]
    errors = [Error.from_event(e) for e in errors]
    assert [e.code for e in errors] == ["voice_not_found", "invalid_request_error", "invalid_request_error",
                                        "string_above_max_length", "invalid_request_error", "no_stream"]
    assert all("\n" not in e.text for e in errors)
    assert "unknown voice 'nobody'" in errors[0].text and "invalid voice name" in errors[1].text
    assert "input is empty" in errors[2].text and "4096" in errors[3].text and "random" in errors[4].text
    assert np.array_equal(pcm_of(good), http_pcm(server, TEXT))


def test_a_failing_generation_is_an_error_event_never_audio(server):
    before = health(server)["failed"]
    events = run(synthesize(server, "Hello.", "overflow"))  # latents that overflow the autoregressive model
    assert [e.type for e in events] == ["error"]
    error = Error.from_event(events[0])
    assert "generation failed" in error.text and "\n" not in error.text
    assert health(server)["failed"] == before + 1


def test_a_client_that_disconnects_mid_stream_stops_its_generation(server):
    before = health(server)

    async def leave_after_first_audio():
        conn = client(server)
        await conn.connect()
        await conn.write_event(Synthesize(text=LONG_TEXT).event())  # 40 clips
        events = await answer(conn, until=("audio-chunk",))
        assert health(server)["running"] == 1  # the audio came while the rest is still being made
        await conn.disconnect()
        return events
    events = run(leave_after_first_audio())
    assert [e.type for e in events] == ["audio-start", "audio-chunk"]
    after = wait_for(lambda: (h := health(server))["running"] == 0 and h["cancelled"] > before["cancelled"] and h)
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"]
    assert len(pcm_of(run(synthesize(server, TEXT)))) > 1000  # and the next request is served


def test_a_reset_connection_and_bytes_that_are_not_wyoming_leave_the_server_up(server):
    """A client that resets its connection mid-stream (RST, not FIN) and one that speaks HTTP to the Wyoming port:
    each connection just ends (the module's server fixture then finds no traceback in the log)."""
    before = health(server)

    async def reset_mid_stream():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.wyoming_port)
        await async_write_event(Synthesize(text=LONG_TEXT).event(), writer)
        while (await async_read_event(reader)).type != "audio-chunk":
            pass
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        writer.transport.abort()

    async def speak_http_to_wyoming():
        reader, writer = await asyncio.open_connection("127.0.0.1", server.wyoming_port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        return await reader.read()  # the server closes the connection: b""
    run(reset_mid_stream())
    assert run(speak_http_to_wyoming()) == b""
    wait_for(lambda: (h := health(server))["running"] == 0 and h["cancelled"] == before["cancelled"] + 1)
    assert len(pcm_of(run(synthesize(server, TEXT)))) > 1000


def test_two_clients_at_once_get_what_they_get_alone(server):
    async def both():
        return await asyncio.gather(synthesize(server, TEXT, "alice"), synthesize(server, TEXT, "bob"))
    alice, bob = run(both())
    assert np.array_equal(pcm_of(alice), http_pcm(server, TEXT, "alice"))
    assert np.array_equal(pcm_of(bob), http_pcm(server, TEXT, "bob"))


# ---------------------------------------------------------------- Wyoming alone

def test_wyoming_alone_without_http(tiny_models_dir, voices_dir, tmp_path):
    sandbox = Sandbox(tmp_path)
    port = free_port()
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "tortoise.server", "--models_dir", str(tiny_models_dir),
                             "--voices_dir", str(voices_dir), "--vocoder", "univnet", "--log_level", "warning",
                             "--no_http", "--wyoming", f"tcp://127.0.0.1:{port}",
                             "--wyoming_options", json.dumps(SETTINGS)], stdout=log, stderr=subprocess.STDOUT,
                            env=sandbox.env())
    server = type("Alone", (), {"wyoming_port": port})()

    async def speak_when_ready():
        end = time.monotonic() + 180
        while time.monotonic() < end:
            try:
                events = await synthesize(server, TEXT, "random")
            except OSError:  # not listening yet
                await asyncio.sleep(0.2)
                continue
            if events[-1].type == "error" and Error.from_event(events[-1]).code == "not_ready":
                await asyncio.sleep(0.2)
                continue
            return events
        raise AssertionError("the Wyoming server never answered")
    try:
        assert len(pcm_of(run(speak_when_ready()))) > 1000
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
    output = (tmp_path / "log").read_text()
    assert code == 0 and "Traceback" not in output, output[-3000:]
    assert "Uvicorn running" not in output and "Wyoming server listening on" in output  # no HTTP API
    sandbox.assert_untouched()


# ---------------------------------------------------------------- a failure after the audio started

def test_a_failure_after_audio_start_is_an_error_without_audio_stop(monkeypatch):
    """A generation that fails after its first clip went out: the client gets the error, never an audio-stop that
    would pass the cut audio off as whole (the service in this process, over a real TCP connection)."""
    from tortoise.server import speech, wyoming_server
    from tortoise.server.app import ServerConfig
    from tortoise.server.engine import Engine
    from tortoise.server.voices import VoiceLoader

    def failing_job(voice, req):
        def work(tts, progress):
            yield 0, torch.full((4800,), 0.1)  # the first clip: 9600 bytes, two audio-chunk events
            progress("diffusion", 0, 1)
            raise RuntimeError("the vocoder broke")
        return work
    monkeypatch.setattr(speech, "render_job", failing_job)
    engine = Engine(lambda: object(), queue_size=1)
    engine.start()
    engine.wait_loaded(10)
    port = free_port()

    async def scenario():
        service = wyoming_server.WyomingService(engine, VoiceLoader([]), ServerConfig(), {"model": "tts-1"})
        server = await wyoming_server.start(f"tcp://127.0.0.1:{port}", service)
        try:
            async with AsyncTcpClient("127.0.0.1", port) as conn:
                await conn.write_event(Synthesize(text="Hello there.").event())
                return await answer(conn)
        finally:
            await server.stop()
    try:
        events = run(scenario(), timeout=60)
    finally:
        engine.stop()
    assert [e.type for e in events] == ["audio-start", "audio-chunk", "audio-chunk", "error"]
    error = Error.from_event(events[-1])
    assert error.text == "the generation failed: RuntimeError: the vocoder broke" and error.code == "server_error"
    assert engine.status()["failed"] == 1
