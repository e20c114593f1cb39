"""The speech server over the Wyoming protocol, the one Home Assistant speaks to local speech engines.

``tortoise-server --wyoming tcp://127.0.0.1:10200`` listens beside the HTTP API (on its event loop, its engine, its
queue and its voices), or instead of it with ``--no_http``. The protocol is the ``wyoming`` package's (wyoming-piper is
its reference server); the events this server answers:

* ``describe`` -> ``info``: one TTS program, ``tortoise``, with every voice a request may name (``random``, the
  voices directories', the package's and the fetched original voices; read from disk each time, as the HTTP listing).
* ``synthesize`` (text, optional voice name) -> ``audio-start``, ``audio-chunk``s (24 kHz, 16-bit, mono), clip by clip
  as the engine makes them, then ``audio-stop``.
* the streaming-synthesis events (``synthesize-start``, ``synthesize-chunk``s, ``synthesize-stop``): the text is
  gathered and spoken at ``synthesize-stop`` as above, then ``synthesize-stopped``. The ``synthesize`` a client sends
  inside a stream for older servers is ignored.

A request is checked as an HTTP one is (:func:`tortoise.server.speech.speech_request` over the ``--wyoming_options``
fields with the text and voice); any problem is one ``error`` event (``text``: the HTTP API's one-line message,
``code``: its code) and the connection stays open. A failure after ``audio-start`` is an ``error`` event with no
``audio-stop``, so no client takes cut audio for whole audio. A client that disconnects cancels its generation at the
next stage boundary. Each connection's requests run one after the other, through the server's one queue.
"""
from __future__ import annotations

import asyncio
import json
import logging

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from tortoise.server import audio, speech
from tortoise.server.engine import QueueFull
from tortoise.server.errors import (APIError, busy_error, generation_error, not_ready_error, one_line,
                                    timeout_error)
from tortoise.server.voices import list_voices

log = logging.getLogger("uvicorn.error")
DEFAULT_OPTIONS = {"model": "tts-1"}
SAMPLES_PER_CHUNK = 4096  # 171 ms of 24 kHz audio per audio-chunk event
ATTRIBUTION = Attribution(name="James Betker (Tortoise-TTS)", url="https://github.com/neonbjb/tortoise-tts")
LANGUAGES = ["en"]  # the released models speak English
OWN_FIELDS = ("input", "voice", "response_format", "stream_format")  # set per request, not by --wyoming_options


def parse_options(text) -> dict:
    """``--wyoming_options``: a JSON object of ``POST /v1/audio/speech`` fields every Wyoming request gets (``voice``
    is the voice when the client names none). Checked once here, with a test text, so that a bad option stops the
    server at start with the HTTP API's one-line message instead of failing every request."""
    try:
        options = json.loads(text) if text else {}
    except ValueError as e:
        raise ValueError(f"--wyoming_options is not JSON ({e}): give an object such as '{{\"model\": \"tts-1\"}}'")
    if not isinstance(options, dict):
        raise ValueError("--wyoming_options must be a JSON object, such as '{\"model\": \"tts-1\", \"seed\": 3}'")
    taken = sorted(set(options) & set(OWN_FIELDS) - {"voice"})
    if taken:
        raise ValueError(f"--wyoming_options cannot set {', '.join(taken)}: Wyoming requests carry their text and "
                         "get 24 kHz 16-bit audio")
    options = {**DEFAULT_OPTIONS, **options}
    try:
        speech.speech_request(_body("Checking the options.", options, None))
    except APIError as e:
        raise ValueError(f"--wyoming_options: {e.message}") from None
    return options


def _body(text, options, voice) -> bytes:
    body = {"voice": "random", **options, "input": text, "response_format": "pcm"}
    if voice:
        body["voice"] = voice
    return json.dumps(body).encode()


class WyomingService:
    """What every Wyoming connection shares with the HTTP API: the engine, the voice loader, the configuration."""

    def __init__(self, engine, voices, config, options):
        self.engine = engine
        self.voices = voices
        self.config = config
        self.options = dict(options)

    def info(self) -> Info:
        voices = [TtsVoice(name=v["id"], attribution=ATTRIBUTION, installed=True, version=None, languages=LANGUAGES,
                           description=f"{v['id']} ({v['source']} voice)")
                  for v in list_voices(self.config.voices_dirs)]
        program = TtsProgram(name="tortoise", attribution=ATTRIBUTION, installed=True, version=None, voices=voices,
                             description="Tortoise text to speech (multi-voice, voice cloning)",
                             supports_synthesize_streaming=True)
        return Info(tts=[program])

    async def speak(self, text, voice, send, on_job):
        """Speak ``text`` in ``voice`` (None: the default): ``send(event)`` gets audio-start, the chunks, audio-stop.
        Raises :class:`APIError` for anything that goes wrong; ``on_job(job)`` learns the job once it is queued."""
        if not self.engine.ready:
            raise not_ready_error(self.engine)
        req = speech.speech_request(_body(text, self.options, voice), self.config.model_identity)
        widths = self.config.latent_widths
        if widths is not None and req.settings.stream:
            widths = (widths[0], None)  # the streaming path uses the autoregressive latent only
        loaded = await asyncio.to_thread(self.voices.load, req.names, widths)
        try:
            job = self.engine.submit(speech.render_job(loaded, req), asyncio.get_running_loop(), self.config.timeout)
        except QueueFull as e:
            raise busy_error(self.engine, e.retry_after) from None
        on_job(job)
        try:
            await self._send_audio(job, req, send)
        finally:
            job.cancel("request ended")  # a no-op once it has finished

    async def _send_audio(self, job, req, send):
        kind, value = await _next(job)
        started = False
        while kind != "done":
            if kind == "error":
                raise generation_error(value)
            if not started:
                await send(AudioStart(rate=audio.SAMPLE_RATE, width=2, channels=1).event())
                started = True
            _, chunk = value
            if req.speed != 1:
                chunk = await asyncio.to_thread(audio.change_speed, chunk, req.speed)
            data = audio.to_int16(chunk.numpy()).tobytes()
            for i in range(0, len(data), 2 * SAMPLES_PER_CHUNK):
                await send(AudioChunk(rate=audio.SAMPLE_RATE, width=2, channels=1,
                                      audio=data[i:i + 2 * SAMPLES_PER_CHUNK]).event())
            kind, value = await _next(job)
        if not started:
            await send(AudioStart(rate=audio.SAMPLE_RATE, width=2, channels=1).event())
        await send(AudioStop().event())


async def _next(job):
    try:
        return await job.next()
    except TimeoutError:
        job.cancel("timeout")
        raise timeout_error() from None


class WyomingHandler(AsyncEventHandler):
    """One client connection. Its events are read all the time (a disconnect is noticed while audio is being made);
    its speech requests run one after the other in a task of their own."""

    def __init__(self, service, reader, writer):
        super().__init__(reader, writer)
        self.service = service
        self._stream = None   # (voice, [text]) between synthesize-start and synthesize-stop
        self._task = None     # the last speech request's task (each waits for the one before)
        self._job = None      # the engine's job of the request being spoken

    async def run(self) -> None:
        """The package's read loop, where a connection the client resets is a disconnect (its generation stops) and
        bytes that are not Wyoming events close the connection with one line in the log, never a traceback."""
        try:
            await super().run()  # its finally calls disconnect()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except (ValueError, KeyError, TypeError) as e:
            log.warning("tortoise-server: closed a Wyoming connection that sent something other than Wyoming events "
                        "(%s: %s)", type(e).__name__, one_line(e))

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self.write_event((await asyncio.to_thread(self.service.info)).event())
        elif Synthesize.is_type(event.type):
            if self._stream is None:  # inside a stream it is the copy sent for older servers
                request = Synthesize.from_event(event)
                self._queue(request.text, _voice_name(request.voice), stopped=False)
        elif SynthesizeStart.is_type(event.type):
            self._stream = (_voice_name(SynthesizeStart.from_event(event).voice), [])
        elif SynthesizeChunk.is_type(event.type):
            if self._stream is None:
                await self._error(APIError(400, "synthesize-chunk outside a stream: send synthesize-start first",
                                           code="no_stream"))
            else:
                self._stream[1].append(SynthesizeChunk.from_event(event).text)
        elif SynthesizeStop.is_type(event.type):
            voice, parts = self._stream or (None, [])
            self._stream = None
            self._queue("".join(parts), voice, stopped=True)
        return True

    def _queue(self, text, voice, stopped):
        self._task = asyncio.create_task(self._after(self._task, text, voice, stopped))

    async def _after(self, previous, text, voice, stopped):
        if previous is not None:
            await asyncio.gather(previous, return_exceptions=True)
        try:
            if text.strip() or not stopped:
                await self.service.speak(text, voice, self.write_event, self._set_job)
        except APIError as e:
            await self._error(e)
        except (ConnectionError, OSError):  # the client went away while audio was being sent
            self._cancel("client disconnected")
            return
        except Exception as e:  # noqa: BLE001 - as the HTTP API does: one line to the client, the server goes on
            log.error("tortoise-server: wyoming request failed: %s: %s", type(e).__name__, one_line(e))
            await self._error(APIError(500, f"{type(e).__name__}: {one_line(e)}", "server_error"))
        if stopped:
            await self._write_quietly(SynthesizeStopped().event())

    async def _error(self, e: APIError):
        log.info("tortoise-server: wyoming request refused: %s", e.message)
        await self._write_quietly(Error(text=e.message, code=e.code or e.type).event())

    async def _write_quietly(self, event):
        try:
            await self.write_event(event)
        except (ConnectionError, OSError):
            self._cancel("client disconnected")

    def _set_job(self, job):
        self._job = job

    def _cancel(self, reason):
        if self._job is not None:
            self._job.cancel(reason)

    async def disconnect(self) -> None:
        """The client closed the connection: its generations stop at their next stage boundary."""
        self._cancel("client disconnected")
        if self._task is not None:
            self._task.cancel()


def _voice_name(voice):
    return voice.name if voice is not None and voice.name else None


def server_for(uri) -> AsyncServer:
    """The ``wyoming`` package's server for ``uri`` (``tcp://HOST:PORT`` or ``unix://PATH``); ValueError otherwise."""
    if not uri.startswith(("tcp://", "unix://")):
        raise ValueError(f"--wyoming {uri}: give tcp://HOST:PORT (Home Assistant's default port is 10200) or "
                         "unix://PATH")
    return AsyncServer.from_uri(uri)


async def start(uri, service) -> AsyncServer:
    """Listen on ``uri`` on the running event loop; the caller stops the server with ``await server.stop()``."""
    server = server_for(uri)
    await server.start(lambda reader, writer: WyomingHandler(service, reader, writer))
    log.info("tortoise-server: Wyoming protocol on %s", uri)
    return server
