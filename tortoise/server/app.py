"""The speech server's HTTP application (FastAPI): OpenAI's speech API over one :class:`~tortoise.server.engine.Engine`.

Routes: ``POST /v1/audio/speech``, ``GET /v1/models``, ``GET /v1/audio/models``, ``GET /v1/audio/voices``,
``GET /v1/audio/voices/{id}``, ``POST /v1/audio/voices``, ``GET /health`` (liveness, queue depth, the recent median
seconds per request, counters), ``GET /ready`` (200 once the models are loaded). With an API key every ``/v1`` route
needs ``Authorization: Bearer KEY``.

A speech request is checked completely (fields, voice, format) before it is queued, so bad input is a 400 that costs
no generation. Audio is sent as one file, or (``stream_format``) as it is made: the status line goes out with the
first audio, so any failure before it is an ordinary HTTP error; a failure after it cuts the stream (``audio``) or
ends it with an ``error`` event (``sse``). An ``sse`` request that has to wait in the queue is answered at once with
``speech.queued`` events (its place, the likely wait), so any failure of it is an ``error`` event. A client that goes
away cancels its job, which stops at the next stage boundary of the pipeline. Nothing here writes a file except an
upload into the upload directory.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tortoise.server import audio, speech
from tortoise.server.engine import QueueFull
from tortoise.server.errors import (NOT_READY_RETRY_S, APIError, busy_error, error_body, generation_error,
                                    not_ready_error, one_line, timeout_error)
from tortoise.server.voices import (VoiceLoader, create_voice, describe_voice, list_voices, read_upload,
                                   voice_list_body)

log = logging.getLogger("uvicorn.error")
CODE_SAMPLES = 1024 * 24000 / 22050  # 24 kHz output samples per autoregressive code (4 mel frames of 256 at 22.05 kHz)
QUEUE_POLL_S = 0.5  # how often a waiting SSE request looks at its place in the queue


@dataclass
class ServerConfig:
    """What the application needs besides its engine."""
    voices_dirs: list = field(default_factory=list)
    upload_dir: Optional[Path] = None     # None: uploads are refused
    api_key: Optional[str] = None
    timeout: Optional[float] = None       # seconds from arrival to the last byte; None: no limit
    model_identity: dict = field(default_factory=dict)  # tortoise.api.model_identity of the engine's models
    latent_widths: Optional[tuple] = None  # (AR, diffusion) widths a .pth voice must have for these models
    wyoming_uri: Optional[str] = None      # also serve the Wyoming protocol there (tcp://HOST:PORT)
    wyoming_options: dict = field(default_factory=dict)  # speech request fields of every Wyoming request


# ---------------------------------------------------------------- errors

def _error_response(status, body, headers=None):
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app):
    @app.exception_handler(APIError)
    async def api_error(request, exc: APIError):
        return _error_response(exc.status, exc.body(), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error_response(400, error_body(f"{loc or 'body'}: {first.get('msg', 'invalid request')}",
                                               param=loc or None))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc):
        if exc.status_code == 404:
            message = f"unknown route {request.method} {request.url.path}: see /docs for the routes"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}: see /docs"
        else:
            message = exc.detail
        return _error_response(exc.status_code, error_body(message, code=str(exc.status_code)),
                               getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request, exc):
        log.error("tortoise-server: %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__,
                  one_line(exc))
        return _error_response(500, error_body(f"{type(exc).__name__}: {one_line(exc)}", "server_error"))


# ---------------------------------------------------------------- auth

def _auth(config):
    def check(request: Request):
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer KEY' (the server's "
                                "--api_key / TORTOISE_API_KEY)", "authentication_error", code="missing_api_key")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), config.api_key.encode()):
            raise APIError(401, "incorrect API key: send the server's key as 'Authorization: Bearer KEY'",
                           "authentication_error", code="invalid_api_key")
    return check


# ---------------------------------------------------------------- waiting on a job

async def _until_disconnected(receive):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


class _Watch:
    """Cancels ``job`` when the client disconnects, while the handler waits (before any byte of the answer)."""

    def __init__(self, request, job):
        self.job = job
        self.task = asyncio.ensure_future(_until_disconnected(request.receive))
        self.task.add_done_callback(lambda t: t.cancelled() or job.cancel("client disconnected"))

    async def next(self):
        try:
            return await self.job.next()
        except TimeoutError:
            self.job.cancel("timeout")
            raise timeout_error() from None

    async def poll(self, seconds):
        try:
            return await self.job.poll(seconds)
        except TimeoutError:
            self.job.cancel("timeout")
            raise timeout_error() from None

    def stop(self):
        self.task.cancel()


class AudioStream(Response):
    """A response sent as it is made: status and headers with the first chunk, then every chunk from ``chunks``.
    While it streams it listens for the client going away and then cancels ``job``. If ``chunks`` fails, the body
    ends without its final chunk, so the client sees a cut stream, not a complete one."""

    def __init__(self, chunks, job, media_type, headers):
        self.chunks = chunks
        self.job = job
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope, receive, send):
        try:
            async with anyio.create_task_group() as group:
                async def watch():
                    await _until_disconnected(receive)
                    self.job.cancel("client disconnected")
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    await self._send(send)
                except OSError:  # the client went away while a chunk was being sent
                    self.job.cancel("client disconnected")
                group.cancel_scope.cancel()
        finally:
            self.job.cancel("stream ended")  # a no-op once the job has finished
            await self.chunks.aclose()

    async def _send(self, send):
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for data in self.chunks:
                if data:
                    await send({"type": "http.response.body", "body": data, "more_body": True})
        except APIError as e:
            log.warning("tortoise-server: stream cut: %s", e.message)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# ---------------------------------------------------------------- the speech route

async def _audio_chunks(first, watch, req):
    """The job's audio after speed (``[S]`` float tensors): ``first`` (already received), then the rest."""
    kind, value = first
    while True:
        if kind == "item":
            _, chunk = value
            yield await anyio.to_thread.run_sync(audio.change_speed, chunk, req.speed) if req.speed != 1 else chunk
        elif kind == "done":
            return
        else:
            raise generation_error(value)
        kind, value = await watch.next()


async def _encoded(chunks, encoder):
    async for chunk in chunks:
        yield await anyio.to_thread.run_sync(encoder.write, chunk.numpy())
    yield await anyio.to_thread.run_sync(encoder.close)


def _sse(payload):
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def _sse_events(chunks, encoder, usage):
    """OpenAI's speech events: ``speech.audio.delta`` with base64 audio, then ``speech.audio.done`` with usage; a
    failure after the start is one ``error`` event (OpenAI's error object) ending the stream."""
    try:
        async for chunk in chunks:
            data = await anyio.to_thread.run_sync(encoder.write, chunk.numpy())
            if data:
                yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        tail = await anyio.to_thread.run_sync(encoder.close)
        if tail:
            yield _sse({"type": "speech.audio.delta", "audio": base64.b64encode(tail).decode()})
    except APIError as e:
        yield _sse({"type": "error", **e.body()})
        return
    yield _sse({"type": "speech.audio.done", "usage": usage()})


def _queued_event(engine, position):
    return _sse({"type": "speech.queued", "position": position, "estimated_wait_s": engine.wait_estimate(position)})


async def _sse_after_queue(watch, engine, req, encoder, usage):
    """An event stream that opens while its request waits: ``speech.queued`` events (its place in the queue: how many
    requests are ahead of it, the running one included; and the likely wait) whenever the place changes, then the
    audio as :func:`_sse_events` sends it. The status is already 200, so a failure before the first audio is an
    ``error`` event too."""
    shown = None
    while True:
        position = engine.position(watch.job)
        if position and position != shown:
            shown = position
            yield _queued_event(engine, position)
        try:
            first = await watch.poll(QUEUE_POLL_S)
        except APIError as e:
            yield _sse({"type": "error", **e.body()})
            return
        if first is not None:
            break
    if first[0] == "error":
        yield _sse({"type": "error", **generation_error(first[1]).body()})
        return
    async for event in _sse_events(_counted(_audio_chunks(first, watch, req), usage), encoder, usage):
        yield event


class _Usage:
    """OpenAI's usage of an SSE answer, counted as its audio goes out."""

    def __init__(self, tts, req):
        self.tts, self.req, self.samples = tts, req, 0

    def __call__(self):
        return _usage(self.tts, self.req, lambda: self.samples * self.req.speed)


async def _counted(chunks, usage):
    async for chunk in chunks:
        usage.samples += chunk.numel()
        yield chunk


def _usage(tts, req, output_samples):
    """OpenAI's usage fields for Tortoise: input tokens = the text's BPE tokens, output tokens = the autoregressive
    codes behind the audio (about 21.5 per second)."""
    input_tokens = sum(len(tts.tokenizer.encode(t)) for t in req.texts)
    output_tokens = int(round(output_samples() / CODE_SAMPLES))
    return {"input_tokens": input_tokens, "output_tokens": output_tokens, "total_tokens": input_tokens + output_tokens}


async def speech_route(request, config, engine, voices):
    if not engine.ready:
        raise not_ready_error(engine)
    req = speech.speech_request(await request.body(), config.model_identity)
    widths = config.latent_widths
    if widths is not None and req.settings.stream:
        widths = (widths[0], None)  # the streaming path uses the autoregressive latent only
    voice = await anyio.to_thread.run_sync(voices.load, req.names, widths)
    try:
        job = engine.submit(speech.render_job(voice, req), asyncio.get_running_loop(), config.timeout)
    except QueueFull as e:
        raise busy_error(engine, e.retry_after) from None
    watch = _Watch(request, job)
    headers = {"X-Tortoise-Seed": str(req.settings.seed), "X-Tortoise-Clips": str(len(req.texts)),
               "X-Tortoise-Preset": req.preset}
    if req.stream_format == "sse" and engine.position(job):  # it has to wait: tell it where it stands meanwhile
        watch.stop()
        events = _sse_after_queue(watch, engine, req, audio.StreamEncoder(req.response_format),
                                  _Usage(engine.tts, req))
        return AudioStream(events, job, "text/event-stream", {**headers, "Cache-Control": "no-cache"})
    try:
        first = await watch.next()
        if first[0] == "error":
            raise generation_error(first[1])
    except BaseException:
        watch.stop()
        job.cancel("request ended")
        raise
    if req.stream_format is None:
        try:
            return await _whole(first, watch, req, headers)
        finally:
            watch.stop()
            job.cancel("request ended")
    watch.stop()
    encoder = audio.StreamEncoder(req.response_format)
    chunks = _audio_chunks(first, watch, req)
    if req.stream_format == "sse":
        usage = _Usage(engine.tts, req)
        return AudioStream(_sse_events(_counted(chunks, usage), encoder, usage), job, "text/event-stream",
                           {**headers, "Cache-Control": "no-cache"})
    return AudioStream(_encoded(chunks, encoder), job, audio.CONTENT_TYPES[req.response_format], headers)


async def _whole(first, watch, req, headers):
    import torch
    parts = [chunk async for chunk in _audio_chunks(first, watch, req)]
    wav = torch.cat(parts) if parts else torch.zeros(0)
    body = await anyio.to_thread.run_sync(audio.encode, wav.numpy(), req.response_format)
    return Response(body, media_type=audio.CONTENT_TYPES[req.response_format], headers=headers)


# ---------------------------------------------------------------- the application

async def start_wyoming(config, engine, voices):
    """The Wyoming server beside the HTTP API, on its event loop, over the same engine, queue and voices."""
    from tortoise.server import wyoming_server  # the wyoming package: needed only with --wyoming
    service = wyoming_server.WyomingService(engine, voices, config, config.wyoming_options)
    return await wyoming_server.start(config.wyoming_uri, service)


def create_app(config: ServerConfig, engine) -> FastAPI:
    """The application over ``engine`` (started by the caller)."""
    @contextlib.asynccontextmanager
    async def lifespan(app):
        audio.supported_formats()  # probe the codecs once, before the first request
        wyoming = await start_wyoming(config, engine, voices) if config.wyoming_uri else None
        yield
        if wyoming is not None:
            await wyoming.stop()
        engine.stop()

    voices = VoiceLoader(config.voices_dirs)
    app = FastAPI(title="Tortoise speech server", version="1", summary="OpenAI's speech API on Tortoise-TTS",
                  description=__doc__, lifespan=lifespan)
    _install_error_handlers(app)
    auth = [Depends(_auth(config))]

    @app.get("/health", tags=["server"])
    async def health():
        """Liveness (always 200 while the process serves), with the queue's state and counters."""
        return {"status": "ok", **engine.status()}

    @app.get("/ready", tags=["server"])
    async def ready():
        """200 once the models are loaded; 503 while loading (or when loading failed)."""
        if engine.ready:
            tts = engine.tts
            return {"status": "ready", "device": str(tts.device), "formats": list(audio.supported_formats())}
        return _error_response(503, not_ready_error(engine).body(), {"Retry-After": str(NOT_READY_RETRY_S)})

    @app.get("/v1/models", dependencies=auth, tags=["openai"])
    async def list_models():
        """The model ids ``model`` accepts: tts-1, tts-1-hd, stream and every preset."""
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "tortoise", "preset": preset,
                 "description": text} for name, preset, text in speech.models()]
        return {"object": "list", "data": data}

    @app.get("/v1/audio/models", dependencies=auth, tags=["clients"])
    async def list_audio_models():
        """The model ids in the shape Open WebUI reads (``models: [{id, name}]``)."""
        return {"models": [{"id": name, "name": name} for name, _, _ in speech.models()]}

    @app.get("/v1/audio/voices", dependencies=auth, tags=["openai"])
    async def get_voices():
        """Every voice ``voice`` accepts (random, then the voices directories', the package's and the fetched
        original voices): OpenAI's list in ``data``, and ``voices: [{id, name}]`` for Open WebUI and Kokoro-style
        clients."""
        return voice_list_body(await anyio.to_thread.run_sync(list_voices, config.voices_dirs))

    @app.get("/v1/audio/voices/{voice_id}", dependencies=auth, tags=["openai"])
    async def get_voice(voice_id: str):
        """One voice: where it comes from (``source``), its clips (file, seconds) or latent file, its length."""
        return await anyio.to_thread.run_sync(describe_voice, voice_id, config.voices_dirs)

    @app.post("/v1/audio/voices", dependencies=auth, tags=["openai"], status_code=201)
    async def post_voice(request: Request):
        """Create a voice from uploaded clips (multipart: name, one or more audio_sample files, optional
        add_to_existing=true). The web UI's checks apply: type, size, length, finite samples, a safe name, never
        overwriting."""
        if config.upload_dir is None:
            raise APIError(403, "voice uploads are off: start the server with --voices_dir DIR (and without "
                                "--no_upload)", "permission_error", code="uploads_disabled")
        fields, clips = await read_upload(request)
        made = await anyio.to_thread.run_sync(create_voice, config.upload_dir, config.voices_dirs, fields, clips)
        return JSONResponse(made, status_code=201)

    @app.post("/v1/audio/speech", dependencies=auth, tags=["openai"],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": speech.request_schema()}}}})
    async def create_speech(request: Request):
        """Speak ``input`` in ``voice``: audio in ``response_format``, whole or streamed (``stream_format``)."""
        return await speech_route(request, config, engine, voices)

    return app

