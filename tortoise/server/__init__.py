"""The speech server (``tortoise-server``): OpenAI's speech API on Tortoise, models loaded once, and Home Assistant's
Wyoming protocol beside it.

``POST /v1/audio/speech`` (OpenAI's fields plus Tortoise's seed, candidates and generation options; all six of
OpenAI's formats), ``GET /v1/models``, ``GET /v1/audio/models``, ``GET`` / ``POST /v1/audio/voices``,
``GET /v1/audio/voices/{id}``, ``GET /health``, ``GET /ready``; with ``--wyoming``, the Wyoming protocol's
``describe`` and ``synthesize``. One model set on one device serves a bounded queue of requests in order; a client
that goes away stops its generation at the next stage boundary. Modules: :mod:`~tortoise.server.app` (routes),
:mod:`~tortoise.server.wyoming_server` (Wyoming), :mod:`~tortoise.server.engine` (worker and queue),
:mod:`~tortoise.server.speech` (the request), :mod:`~tortoise.server.audio` (formats, streaming, speed),
:mod:`~tortoise.server.voices`, :mod:`~tortoise.server.errors`, :mod:`~tortoise.server.cli`. FastAPI, uvicorn, PyAV
and wyoming come with the ``server`` extra.
"""


def main(argv=None):
    """Console entry point ``tortoise-server``."""
    from tortoise.server.cli import main as run
    return run(argv)
