"""Parity fixtures for the text and audio front ends, from the ORIGINAL implementation.

Run with the original's environment (our package is not installed there; see tests/parity/make_env.sh):

    /work/origenv/bin/python tests/parity/make_frontend_fixtures.py

Writes, under ``tests/parity/fixtures/frontend/`` (plain dicts, loadable with ``torch.load(..., weights_only=True)``):
  text.pt   token ids (english and basic cleaners), cleaned strings and decoded strings for tricky texts;
            split_and_recombine_text chunks for long texts at several lengths.
  mel.pt    seeded synthetic signals (tones + noise + a silent stretch, 1-2 s) and the original's
            TorchMelSpectrogram (shipped mel norms; also without norms and with normalize=True) and
            wav_to_univnet_mel outputs; torchaudio's HTK/Slaney filter bank.
  audio.pt  small audio files written here (bytes of 16-bit wav at 44.1 and 16 kHz, 24-bit wav at 48 kHz, an
            overdriven float wav, an mp3) and the original load_audio outputs at 22.05 / 24 kHz.
Deterministic: re-running writes the same tensors (the mp3 bytes come from libsndfile's LAME encoder).
"""
import io
import math
import os
import tempfile

import numpy as np
import scipy.io.wavfile
import soundfile as sf
import torch
import torchaudio

from tortoise.models.arch_util import TorchMelSpectrogram
from tortoise.utils.audio import load_audio, wav_to_univnet_mel
from tortoise.utils.text import split_and_recombine_text
from tortoise.utils.tokenizer import VoiceBpeTokenizer, english_cleaners

import tortoise

if "site-packages" not in tortoise.__file__:
    raise SystemExit(f"imported {tortoise.__file__}, not the original tortoise: run with the original's venv python "
                     "(tests/parity/make_env.sh) and without this repository on PYTHONPATH")

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures", "frontend")
ORIG_DATA = os.path.join(os.path.dirname(os.path.abspath(english_cleaners.__code__.co_filename)), "..", "data")

TRICKY_TEXTS = [
    "Hello, world!",
    "Mr. and Mrs. Smith met Dr. Jones at St. Mary's with Co. Ltd. people near Ft. Worth.",
    "Gen. Maj. Col. Capt. Sgt. Lt. Hon. Rev. Esq. Jr. and Drs. Who and How.",
    "It costs $3.50, or $1 for one, $0.01 at least, $1,000,000 in all; also $.5, $5. and $1.2.3 and $0.",
    "£5 and £1,250 and 3 £.",
    "The 1st, 2nd, 3rd, 4th, 11th, 21st, 101st, 112th and 1000th place; 10,000th visitor.",
    "Years: 1066, 1900, 1984, 1999, 2000, 2005, 2010, 2023, 3000, 1001, 1100.",
    "Numbers: 0, 7, 13, 42, 100, 999, 1000, 12345, 1,234,567, 3.14159, 0.5, 007.",
    "She said, \"Don't go!\" and he replied “fine”; 'single quotes' too.",
    "Café naïve résumé — Zürich, Ærøskøbing; 東京; Ελληνικά; Москва; emoji 😀!",
    "   Lots   of\n\nwhitespace\tand\ttabs   ",
    "UPPER case, MiXeD CaSe, and lower.",
    "Special chars: @#%^&*()_+=[]{}|;:<>/?~` and 100% and 24/7 and 3-4 people.",
    "[I am really sad,] Please feed me.",
    "I'm rock 'n' roll... really?! Yes!!! No?",
    "Dr.Who st.paul mr.x",
]
BASIC_TEXTS = ["Hello, Mr. Smith: $5 and 21st!", "Café “quoted” text"]


def _read(name: str) -> str:
    with open(os.path.join(ORIG_DATA, name), encoding="utf-8") as f:
        return f.read()


def text_fixtures() -> dict:
    tok = VoiceBpeTokenizer()
    basic = VoiceBpeTokenizer(use_basic_cleaners=True)
    riding_hood = _read("riding_hood.txt")
    texts = TRICKY_TEXTS + [riding_hood]
    ids = [tok.encode(t) for t in texts]
    long_word = "supercalifragilistic" * 20  # 400 characters, longer than max_length
    split_cases = [
        (riding_hood, 200, 300),
        (riding_hood, 50, 100),
        (_read("seal_copypasta.txt"), 200, 300),
        (_read("got.txt")[:5000], 200, 300),
        ("This is a sample sentence.\nThis is another sample sentence.\n"
         "This is a longer sample sentence that should force a split inthemiddlebutinotinthislongword.\n"
         "\"Don't split my quote... please\"", 20, 40),
        ("When you are really angry sometimes you use consecutive exclamation marks!!!!!! Is this a good thing "
         "to do?!?!?!\nI don't know but we should handle this situation..........................", 30, 50),
        (f"Short start. {long_word} and then the rest of it goes on. “A quote, with a sentence. And another.” "
         "he said. " * 3, 200, 300),
        ("word " * 400, 200, 300),
    ]
    return {
        "texts": texts,
        "ids": ids,
        "cleaned": [english_cleaners(t) for t in texts],
        "decoded": [tok.decode(i) for i in ids],
        "basic_texts": BASIC_TEXTS,
        "basic_ids": [basic.encode(t) for t in BASIC_TEXTS],
        "split_texts": [c[0] for c in split_cases],
        "split_desired": [c[1] for c in split_cases],
        "split_max": [c[2] for c in split_cases],
        "split_chunks": [split_and_recombine_text(*c) for c in split_cases],
    }


def _signal(sr: int, seconds: float, seed: int) -> torch.Tensor:
    """Tones + noise with a silent stretch (exercises the log floor), shape [N], peak < 1."""
    g = torch.Generator().manual_seed(seed)
    n = int(sr * seconds)
    t = torch.arange(n, dtype=torch.float64) / sr
    f0, f1 = 110.0 * (seed + 1), 2500.0 + 700 * seed
    x = 0.35 * torch.sin(2 * math.pi * f0 * t) + 0.15 * torch.sin(2 * math.pi * f1 * t + 0.3 * seed)
    x = x * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))  # slow amplitude modulation
    x = x + 0.03 * torch.randn(n, generator=g, dtype=torch.float64)
    x[n // 3: n // 3 + n // 10] = 0
    return x.float()


def mel_fixtures() -> dict:
    ar_wavs = torch.stack([_signal(22050, 1.0, 0), _signal(22050, 1.0, 1)])  # [2, 22050]
    ar_long = _signal(22050, 2.0, 2)[None]  # [1, 44100]
    univ_wav = _signal(24000, 1.5, 3)[None]  # [1, 36000]
    mel = TorchMelSpectrogram()
    return {
        "ar_wavs": ar_wavs,
        "ar_mel": mel(ar_wavs),
        "ar_long": ar_long,
        "ar_long_mel": mel(ar_long[:, None]),  # [B, 1, N] input is accepted too
        "ar_mel_no_norms": TorchMelSpectrogram(mel_norm_file=None)(ar_wavs),
        "ar_mel_normalized": TorchMelSpectrogram(normalize=True)(ar_wavs),
        "torchaudio_fbank": mel.mel_stft.mel_scale.fb.clone(),  # [513, 80], HTK scale, Slaney norm
        "mel_norms": mel.mel_norms.clone(),
        "univnet_wav": univ_wav,
        "univnet_mel": wav_to_univnet_mel(univ_wav, device="cpu"),
        "univnet_mel_normalized": wav_to_univnet_mel(univ_wav, do_normalization=True, device="cpu"),
    }


def _file_bytes(data: np.ndarray, sr: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    if subtype == "FLOAT":  # scipy: libsndfile would add a PEAK chunk holding a timestamp (not reproducible)
        scipy.io.wavfile.write(buf, sr, data.astype(np.float32))
    else:
        sf.write(buf, data, sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def audio_fixtures() -> dict:
    cases = [  # name, file bytes, original extension, target rates
        ("wav16_44k", _file_bytes(_signal(44100, 0.4, 4).numpy(), 44100, "WAV", "PCM_16"), ".wav", [22050, 24000]),
        ("wav16_16k", _file_bytes(_signal(16000, 0.4, 5).numpy(), 16000, "WAV", "PCM_16"), ".wav", [22050, 24000]),
        ("wav24_48k", _file_bytes(_signal(48000, 0.25, 6).numpy(), 48000, "WAV", "PCM_24"), ".wav", [24000]),
        ("float_overdriven_22k", _file_bytes((2.5 * _signal(22050, 0.25, 7)).numpy(), 22050, "WAV", "FLOAT"),
         ".wav", [22050, 24000]),
        ("mp3_44k", _file_bytes(_signal(44100, 0.5, 8).numpy(), 44100, "MP3", "MPEG_LAYER_III"), ".mp3",
         [22050, 24000]),
    ]
    out = {"names": [], "files": [], "suffixes": [], "rates": [], "outputs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name, data, suffix, rates in cases:
            path = os.path.join(tmp, name + suffix)
            with open(path, "wb") as f:
                f.write(data)
            out["names"].append(name)
            out["files"].append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            out["suffixes"].append(suffix)
            out["rates"].append(rates)
            out["outputs"].append([load_audio(path, r) for r in rates])
    return out


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    torch.save(text_fixtures(), os.path.join(OUT, "text.pt"))
    torch.save(mel_fixtures(), os.path.join(OUT, "mel.pt"))
    torch.save(audio_fixtures(), os.path.join(OUT, "audio.pt"))
    print("torchaudio", torchaudio.__version__, "soundfile", sf.__version__, "libsndfile", sf.__libsndfile_version__)
    for name in sorted(os.listdir(OUT)):
        print(f"{name}: {os.path.getsize(os.path.join(OUT, name)) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
