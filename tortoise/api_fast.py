"""The original v3's ``tortoise.api_fast`` module path, kept for code that imports it.

Its ``TextToSpeech`` is :class:`tortoise.api.TextToSpeech`, which has the fast path (``tts_stream``: one sample, the
HiFi-GAN decoder straight from the autoregressive latents, cross-faded chunks) beside the full pipeline.
"""
from tortoise.api import ChunkCrossfader, TextToSpeech  # noqa: F401

__all__ = ["TextToSpeech", "ChunkCrossfader"]
