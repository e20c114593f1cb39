"""Audio out of the speech server: OpenAI's response formats, encoded whole or as a stream, and playback speed.

Formats, by OpenAI's names (24 kHz mono, as OpenAI's speech endpoint sends):

* ``wav``: 16-bit PCM WAV. Whole: exact sizes in the header. Streamed: the sizes are 0xFFFFFFFF (unknown), the usual
  convention for a WAV of unknown length; readers take the data to the end of the stream.
* ``pcm``: raw 16-bit signed little-endian samples, no header.
* ``mp3`` (LAME, 96 kbit/s CBR), ``opus`` (Ogg Opus, 64 kbit/s), ``aac`` (AAC-LC in ADTS frames, 96 kbit/s) and
  ``flac`` (16-bit): encoded by FFmpeg's libraries through PyAV (``av``, in the ``server`` extra), the encoders
  every ffmpeg-based reader decodes. Whole files are written to a seekable buffer, so the muxer fills in what it
  learns at the end (MP3's Xing frame with the exact length, FLAC's total samples and MD5). A stream is written to a
  write-only sink: every packet is flushed as it is muxed (``flush_packets``) and Ogg pages hold 20 ms, so the bytes
  of a clip leave with that clip, not at the end; the formats need no trailer (an ADTS frame and an Ogg page each
  stand alone; a streamed FLAC has no total length, as FLAC allows for streams). Without PyAV only wav and pcm are
  offered; :func:`supported_formats` finds out at run time by encoding a short test tone.

Speed (OpenAI's ``speed``, 0.25 to 4.0) is a time stretch that keeps the pitch: a phase vocoder (Flanagan & Golden
1966, in the form of Laroche & Dolson 1999 without phase locking) over a 1024-point STFT with a 256-sample hop.
"""
from __future__ import annotations

import importlib.util
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
# format -> (FFmpeg muxer, encoder, bit rate in bit/s or None for lossless)
AV_FORMATS = {"mp3": ("mp3", "libmp3lame", 96_000), "opus": ("ogg", "libopus", 64_000),
              "aac": ("adts", "aac", 96_000), "flac": ("flac", "flac", None)}
STREAM_MUX_OPTIONS = {"flush_packets": "1", "page_duration": "20000"}  # page_duration (Ogg only): 20 ms, in us
MIN_SPEED, MAX_SPEED = 0.25, 4.0
STRETCH_FFT, STRETCH_HOP = 1024, 256  # 42.7 ms window, 10.7 ms hop at 24 kHz
_UNKNOWN_SIZE = 0xFFFFFFFF


def to_int16(audio) -> np.ndarray:
    """``[S]`` float audio in [-1, 1] (clipped) -> int16 samples."""
    x = np.asarray(audio, dtype=np.float32).reshape(-1)
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")


def has_av() -> bool:
    """Whether PyAV (the ``server`` extra's encoder) is installed; imported only when a format needs it."""
    return importlib.util.find_spec("av") is not None


def wav_file(audio) -> bytes:
    """A complete 16-bit mono 24 kHz WAV of ``audio``, sizes in the header."""
    data = to_int16(audio).tobytes()
    return _wav_header(len(data) + 36, len(data)) + data


def wav_stream_header() -> bytes:
    """The 44-byte header of a 16-bit mono 24 kHz WAV whose length is not known yet (sizes 0xFFFFFFFF)."""
    return _wav_header(_UNKNOWN_SIZE, _UNKNOWN_SIZE)


def _wav_header(riff_size, data_size) -> bytes:
    fmt = struct.pack("<HHIIHH", 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)  # PCM, mono, rate, bytes/s, align, bits
    return (b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", data_size))


def encode(audio, fmt: str) -> bytes:
    """A whole clip ``[S]`` (float, 24 kHz) as a complete file in ``fmt``."""
    if fmt == "pcm":
        return to_int16(audio).tobytes()
    if fmt == "wav":
        return wav_file(audio)
    buf = io.BytesIO()
    encoder = AVEncoder(fmt, buf, {})
    encoder.write(audio)
    encoder.close()
    return buf.getvalue()


class _Sink:
    """A write-only, unseekable file for FFmpeg's muxers that hands out what was written so far (:meth:`take`).
    Unseekable, a muxer writes nothing it would have to go back to."""

    def __init__(self):
        self._buf = bytearray()

    def write(self, data):
        self._buf.extend(data)
        return len(data)

    def take(self) -> bytes:
        data = bytes(self._buf)
        self._buf = bytearray()
        return data


class AVEncoder:
    """One FFmpeg encoder and muxer (through PyAV) writing ``fmt`` into ``file``; float chunks in, as 16-bit samples,
    which PyAV converts to the encoder's sample format and frame size."""

    def __init__(self, fmt, file, mux_options):
        import av  # the server extra's encoder: imported here so that wav and pcm work without it
        muxer, codec, bit_rate = AV_FORMATS[fmt]
        self._container = av.open(file, "w", format=muxer, container_options=dict(mux_options))
        self._stream = self._container.add_stream(codec, rate=SAMPLE_RATE, layout="mono")
        if bit_rate:
            self._stream.bit_rate = bit_rate
        self._frame = av.AudioFrame
        self._pts = 0

    def write(self, audio):
        x = to_int16(audio)  # the samples wav and pcm carry: a FLAC decodes to exactly them
        if x.size == 0:
            return
        frame = self._frame.from_ndarray(x[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = SAMPLE_RATE, self._pts
        self._pts += x.size
        self._mux(self._stream.encode(frame))

    def close(self):
        self._mux(self._stream.encode(None))  # drain the encoder
        self._container.close()

    def _mux(self, packets):
        for packet in packets:
            self._container.mux(packet)


class StreamEncoder:
    """Encodes audio chunk by chunk: :meth:`write` returns the bytes ready to send, :meth:`close` the rest."""

    def __init__(self, fmt: str):
        self.fmt = fmt
        self._started = False
        self._encoder = self._sink = None
        if fmt in AV_FORMATS:
            self._sink = _Sink()
            self._encoder = AVEncoder(fmt, self._sink, STREAM_MUX_OPTIONS)

    def write(self, audio) -> bytes:
        if self._encoder is not None:
            self._encoder.write(audio)
            return self._sink.take()
        data = to_int16(audio).tobytes()
        if self.fmt == "wav" and not self._started:
            data = wav_stream_header() + data
        self._started = True
        return data

    def close(self) -> bytes:
        if self._encoder is not None:
            self._encoder.close()
            return self._sink.take()
        if self.fmt == "wav" and not self._started:
            self._started = True
            return wav_stream_header()
        return b""


@lru_cache(maxsize=1)
def supported_formats() -> tuple:
    """The formats this installation writes, in OpenAI's order: wav and pcm always; mp3, opus, aac and flac when
    PyAV is installed and its FFmpeg encodes a test tone in them, whole and streamed."""
    tone = 0.1 * np.sin(2 * np.pi * 220 * np.arange(SAMPLE_RATE // 10) / SAMPLE_RATE)
    ok = []
    for fmt in OPENAI_FORMATS:
        if fmt in ("wav", "pcm"):
            ok.append(fmt)
            continue
        if not has_av():
            continue
        try:
            stream = StreamEncoder(fmt)
            streamed = stream.write(tone) + stream.close()
            if encode(tone, fmt) and streamed:
                ok.append(fmt)
        except Exception:  # noqa: BLE001 - an FFmpeg build without this encoder raises one of several error types
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
