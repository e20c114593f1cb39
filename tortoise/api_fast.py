"""The original v3's ``tortoise.api_fast`` module path, kept for code that imports it.

Its module-level helpers are :mod:`tortoise.api`'s (the same objects). Its ``TextToSpeech`` is
:class:`tortoise.api.TextToSpeech` with the original ``api_fast`` signature of :meth:`TextToSpeech.tts`: the fast
path (one autoregressive sample, its latents decoded by the HiFi-GAN decoder; no CLVP, no diffusion), returning the
whole clip ``[1, 1, S]`` at 24 kHz, as ``read_fast.py`` uses it. ``tts_stream`` yields the same audio in chunks.
"""
import torch

from tortoise import api
from tortoise.api import (DEFAULT_MODELS_DIR, MODELS, MODELS_DIR, ChunkCrossfader, classify_audio_clip,  # noqa: F401
                          do_spectrogram_diffusion, fix_autoregressive_output, format_conditioning, get_model_path,
                          load_discrete_vocoder_diffuser, pad_or_truncate, pick_best_batch_size_for_gpu)

__all__ = ["TextToSpeech", "ChunkCrossfader", "MODELS_DIR", "DEFAULT_MODELS_DIR", "MODELS", "get_model_path",
           "pad_or_truncate", "load_discrete_vocoder_diffuser", "format_conditioning", "fix_autoregressive_output",
           "do_spectrogram_diffusion", "classify_audio_clip", "pick_best_batch_size_for_gpu"]

_AR_FIELDS = ("temperature", "length_penalty", "repetition_penalty", "top_p", "max_mel_tokens")


class TextToSpeech(api.TextToSpeech):
    """:class:`tortoise.api.TextToSpeech` whose :meth:`tts` is the original ``api_fast``'s: the fast path."""

    def tts(self, text, voice_samples=None, k=1, verbose=True, use_deterministic_seed=None,
            num_autoregressive_samples=512, temperature=.8, length_penalty=1, repetition_penalty=2.0, top_p=.8,
            max_mel_tokens=500, cvvp_amount=.0, conditioning_latents=None, options=None, **hf_generate_kwargs):
        """Speak ``text`` through the fast path -> 24 kHz audio ``[1, 1, S]``. ``k``, ``num_autoregressive_samples``
        and ``cvvp_amount`` are the original's and have no effect (one sample, nothing to rank); so have the
        diffusion knobs a preset brings (``tts_with_preset``). ``options``: a preset's settings, whose
        autoregressive ones (temperature, top_p, ...) are used."""
        ar = dict(temperature=temperature, length_penalty=length_penalty, repetition_penalty=repetition_penalty,
                  top_p=top_p, max_mel_tokens=max_mel_tokens)
        if options is not None:
            ar = {name: getattr(options, name) for name in _AR_FIELDS}
        for name in ("diffusion_iterations", "cond_free", "cond_free_k", "diffusion_temperature", "sampler",
                     "latent_averaging_mode", "exact_ranking"):
            hf_generate_kwargs.pop(name, None)
        chunks = self.tts_stream(text, voice_samples=voice_samples, conditioning_latents=conditioning_latents,
                                 verbose=verbose, use_deterministic_seed=use_deterministic_seed,
                                 stream_chunk_size=ar["max_mel_tokens"] + 1, **ar, **hf_generate_kwargs)
        return torch.cat([c.reshape(-1) for c in chunks]).reshape(1, 1, -1)

    def handle_chunks(self, wav_gen, wav_gen_prev, wav_overlap, overlap_len):
        """The original's streaming stitch for one step: the decode of every latent so far ``wav_gen`` [S], the
        previous decode and its held-back tail -> (new samples with their head cross-faded, ``wav_gen``, its
        tail). :class:`ChunkCrossfader` is the same stitch as an object."""
        fader = ChunkCrossfader(overlap_len)
        fader.emitted = 0 if wav_gen_prev is None else wav_gen_prev.shape[-1] - overlap_len
        fader.tail = wav_overlap
        return fader.push(wav_gen), wav_gen, wav_gen[..., -overlap_len:]
