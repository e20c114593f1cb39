"""The speech server (``tortoise-server``): OpenAI's speech API on Tortoise, models loaded once.

``POST /v1/audio/speech`` (OpenAI's fields plus Tortoise's seed, candidates and generation options), ``GET /v1/models``,
``GET`` / ``POST /v1/audio/voices``, ``GET /health``, ``GET /ready``. One model set on one device serves a bounded
queue of requests in order; a client that goes away stops its generation at the next stage boundary. Modules:
:mod:`~tortoise.server.app` (routes), :mod:`~tortoise.server.engine` (worker and queue),
:mod:`~tortoise.server.speech` (the request), :mod:`~tortoise.server.audio` (formats, streaming, speed),
:mod:`~tortoise.server.voices`, :mod:`~tortoise.server.cli`. FastAPI and uvicorn come with the ``server`` extra.
"""


def main(argv=None):
    """Console entry point ``tortoise-server``."""
    from tortoise.server.cli import main as run
    return run(argv)
