"""Audio out of the speech server: OpenAI's response formats, encoded whole or as a stream, and playback speed.

Formats, by OpenAI's names (24 kHz mono, as OpenAI's speech endpoint sends):

* ``wav``: 16-bit PCM WAV. Whole: exact sizes in the header. Streamed: the sizes are 0xFFFFFFFF (unknown), the usual
  convention for a WAV of unknown length; readers take the data to the end of the stream.
* ``pcm``: raw 16-bit signed little-endian samples, no header.
* ``flac``, ``mp3``, ``opus`` (Ogg Opus): written by libsndfile (through ``soundfile``) where the installed build
  has the codec; :func:`supported_formats` finds out at run time by encoding a short test tone. ``aac`` never:
  libsndfile has no AAC encoder. MP3 is constant bit rate, so a stream's length can be worked out without the
  header frame that libsndfile fills in at the end (a whole file carries it; a stream keeps it as a silent first
  frame, 24 ms). A streamed FLAC has no total length in its header (FLAC allows this for streams; libsndfile itself
  cannot read such a stream back, players and ffmpeg can).

Speed (OpenAI's ``speed``, 0.25 to 4.0) is a time stretch that keeps the pitch: a phase vocoder (Flanagan & Golden
1966, in the form of Laroche & Dolson 1999 without phase locking) over a 1024-point STFT with a 256-sample hop.
"""
from __future__ import annotations

import io
import math
import struct
from functools import lru_cache

import numpy as np
import torch

SAMPLE_RATE = 24000
OPENAI_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")  # every format OpenAI's speech endpoint names
CONTENT_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                 "wav": "audio/wav", "pcm": "audio/pcm"}
_SNDFILE = {"flac": ("FLAC", "PCM_16", {}),
            "mp3": ("MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT", "compression_level": 0.4}),  # 96 kbit/s
            "opus": ("OGG", "OPUS", {})}
MIN_SPEED, MAX_SPEED = 0.25, 4.0
STRETCH_FFT, STRETCH_HOP = 1024, 256  # 42.7 ms window, 10.7 ms hop at 24 kHz
_UNKNOWN_SIZE = 0xFFFFFFFF


def to_int16(audio) -> np.ndarray:
    """``[S]`` float audio in [-1, 1] (clipped) -> int16 samples."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")


def _float(audio) -> np.ndarray:
    return np.clip(np.asarray(audio, dtype=np.float32).reshape(-1), -1.0, 1.0)


def encode(audio, fmt: str) -> bytes:
    """A whole clip ``[S]`` (float, 24 kHz) as a complete file in ``fmt``."""
    if fmt == "pcm":
        return to_int16(audio).tobytes()
    import soundfile as sf
    buf = io.BytesIO()
    if fmt == "wav":
        sf.write(buf, to_int16(audio), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    else:
        container, subtype, extra = _SNDFILE[fmt]
        with sf.SoundFile(buf, "w", SAMPLE_RATE, 1, subtype=subtype, format=container, **extra) as f:
            f.write(_float(audio))
    return buf.getvalue()


def wav_stream_header() -> bytes:
    """The 44-byte header of a 16-bit mono 24 kHz WAV whose length is not known yet (sizes 0xFFFFFFFF)."""
    fmt = struct.pack("<HHIIHH", 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)  # PCM, mono, rate, bytes/s, align, bits
    return (b"RIFF" + struct.pack("<I", _UNKNOWN_SIZE) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", _UNKNOWN_SIZE))


class _Sink:
    """A write-only file for libsndfile that hands out what was written so far (:meth:`take`). Writes that go back
    to bytes already handed out (header fields libsndfile fills in when it closes the file) are dropped."""

    def __init__(self):
        self._buf = bytearray()
        self._base = 0  # offset of _buf[0] in the file
        self._pos = 0

    def write(self, data):
        data = bytes(data)
        n = len(data)
        if self._pos < self._base:  # already sent
            cut = min(n, self._base - self._pos)
            data, self._pos = data[cut:], self._pos + cut
        off = self._pos - self._base
        if off > len(self._buf):
            self._buf.extend(bytes(off - len(self._buf)))
        self._buf[off:off + len(data)] = data
        self._pos += len(data)
        return n

    def seek(self, offset, whence=io.SEEK_SET):
        end = self._base + len(self._buf)
        self._pos = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: end}[whence] + offset
        return self._pos

    def tell(self):
        return self._pos

    def read(self, size=-1):
        off = max(0, self._pos - self._base)
        data = bytes(self._buf[off:] if size < 0 else self._buf[off:off + size])
        self._pos += len(data)
        return data

    def take(self) -> bytes:
        data = bytes(self._buf)
        self._base += len(data)
        self._buf = bytearray()
        return data


class StreamEncoder:
    """Encodes audio chunk by chunk: :meth:`write` returns the bytes ready to send, :meth:`close` the rest."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self._started = False
        self._file = self._sink = None
        if fmt in _SNDFILE:
            import soundfile as sf
            container, subtype, extra = _SNDFILE[fmt]
            self._sink = _Sink()
            self._file = sf.SoundFile(self._sink, "w", SAMPLE_RATE, 1, subtype=subtype, format=container, **extra)

    def write(self, audio) -> bytes:
        if self._file is not None:
            self._file.write(_float(audio))
            self._file.flush()
            return self._sink.take()
        data = to_int16(audio).tobytes()
        if self.fmt == "wav" and not self._started:
            data = wav_stream_header() + data
        self._started = True
        return data

    def close(self) -> bytes:
        if self._file is not None:
            self._file.close()
            return self._sink.take()
        if self.fmt == "wav" and not self._started:
            self._started = True
            return wav_stream_header()
        return b""


@lru_cache(maxsize=1)
def supported_formats() -> tuple:
    """The formats this installation writes, in OpenAI's order: wav and pcm always; flac, mp3 and opus when
    libsndfile encodes a test tone in them, whole and streamed."""
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE // 10) / SAMPLE_RATE)
    ok = []
    for fmt in OPENAI_FORMATS:
        if fmt in ("wav", "pcm"):
            ok.append(fmt)
            continue
        if fmt not in _SNDFILE:
            continue
        try:
            stream = StreamEncoder(fmt)
            streamed = stream.write(tone) + stream.close()
            if encode(tone, fmt) and streamed:
                ok.append(fmt)
        except Exception:  # noqa: BLE001 - a codec this libsndfile lacks raises one of several error types
            continue
    return tuple(ok)


def default_format() -> str:
    """OpenAI's default (mp3) where it can be written, else wav."""
    return "mp3" if "mp3" in supported_formats() else "wav"


def change_speed(audio: torch.Tensor, speed: float) -> torch.Tensor:
    """``[S]`` 24 kHz audio played ``speed`` times as fast with the pitch kept: ``round(S / speed)`` samples.

    Phase vocoder: the STFT is read at fractional frame steps of ``speed``, magnitudes interpolated linearly between
    neighbouring frames, phases advanced by each bin's measured instantaneous frequency (its expected advance
    ``2 pi k hop / n_fft`` plus the wrapped deviation), then inverted by overlap-add."""
    if speed == 1.0 or audio.numel() == 0:
        return audio
    x = audio.reshape(-1).float()
    length = max(1, int(round(x.numel() / speed)))
    if x.numel() < STRETCH_FFT:
        x = torch.nn.functional.pad(x, (0, STRETCH_FFT - x.numel()))
    window = torch.hann_window(STRETCH_FFT, device=x.device)
    spec = torch.stft(x, STRETCH_FFT, STRETCH_HOP, window=window, return_complex=True)  # [F, T]
    n_bins, n_frames = spec.shape
    steps = torch.arange(0, n_frames, speed, device=x.device, dtype=torch.float64)  # [T'] input frame per output
    spec = torch.cat([spec, torch.zeros(n_bins, 2, dtype=spec.dtype, device=x.device)], dim=1)
    i0 = steps.floor().long()
    frac = (steps - i0).float()
    s0, s1 = spec[:, i0], spec[:, i0 + 1]
    magnitude = (1 - frac) * s0.abs() + frac * s1.abs()
    expected = 2 * math.pi * STRETCH_HOP * torch.arange(n_bins, device=x.device).float() / STRETCH_FFT  # [F]
    deviation = s1.angle() - s0.angle() - expected[:, None]
    deviation = deviation - 2 * math.pi * torch.round(deviation / (2 * math.pi))
    advance = expected[:, None] + deviation
    phase = spec[:, :1].angle() + torch.cumsum(torch.cat([torch.zeros_like(advance[:, :1]), advance[:, :-1]], 1), 1)
    stretched = torch.polar(magnitude, phase)
    out = torch.istft(stretched, STRETCH_FFT, STRETCH_HOP, window=window, length=length)
    return out.to(audio.dtype)
