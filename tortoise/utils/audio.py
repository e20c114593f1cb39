"""The original Tortoise's ``tortoise.utils.audio``: its audio helpers and its voice helpers under one module path.

Code written for the original imports ``load_audio``, ``load_voice``, ``load_voices``, ``get_voices``,
``load_wav_to_torch``, ``wav_to_univnet_mel`` and the mel constants from here. Each name is the one object that does
the job in this package (no copies): audio I/O and mels live in :mod:`tortoise.utils.sound`, voice directories in
:mod:`tortoise.utils.voices`. Return conventions are the original's: ``load_voice`` -> ``(clips, None)`` for a voice
of clips, ``(None, latents)`` for a voice of one ``.pth``, ``(None, None)`` for ``random``.
"""
from tortoise.utils.sound import (DEFAULT_MEL_NORM_FILE, MEL_LOG_FLOOR, TACOTRON_MEL_MAX,  # noqa: F401
                                  TACOTRON_MEL_MIN, AudioError, TacotronSTFT, TorchMelSpectrogram,
                                  denormalize_tacotron_mel, dynamic_range_compression, dynamic_range_decompression,
                                  load_audio, load_wav_to_torch, mel_filters, normalize_tacotron_mel, resample,
                                  save_wav, univnet_stft, wav_to_univnet_mel)
from tortoise.utils.voices import BUILTIN_VOICES_DIR, get_voices, load_voice, load_voices  # noqa: F401
