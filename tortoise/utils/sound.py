"""Audio front end: file I/O, resampling and the two mel spectrograms the released checkpoints were trained on.
(The original's module path ``tortoise.utils.audio`` hands these on, with the voice helpers beside them.)

* ``load_audio(path, sampling_rate)`` -> ``[1, N]`` float32 in [-1, 1]. Reads wav/flac/ogg/mp3 with soundfile.
  Resampling follows the original Tortoise: its wav path used band-limited sinc interpolation (Hann window,
  6 zero crossings, roll-off 0.99; ``resample`` below computes the same kernel in torch) and its mp3 path went through
  ``librosa.load``, i.e. soxr at high quality.
* ``TorchMelSpectrogram``: 80-band log mel at 22.05 kHz (n_fft 1024, hop 256, fmax 8000, HTK mel scale, Slaney area
  norm, power 2), divided by the shipped per-band ``mel_norms``: the input of the autoregressive conditioning encoder.
* ``TacotronSTFT`` / ``wav_to_univnet_mel``: 100-band log-magnitude mel at 24 kHz (fmax 12000, Slaney mel scale): the
  mel of the diffusion decoder and the vocoders.

Both mels use ``torch.stft`` (centered, reflect padding, periodic Hann window) and librosa filter banks, in fp32,
on whatever device the input is on. No torchaudio.
"""
import math
import os
import uuid
import warnings
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

_DATA_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "data"))
DEFAULT_MEL_NORM_FILE = os.path.join(_DATA_DIR, "mel_norms.pth")

# Range of the 100-band log mel over the training data; the diffusion model works on mels scaled to [-1, 1].
TACOTRON_MEL_MAX = 2.3143386840820312
TACOTRON_MEL_MIN = -11.512925148010254

SILENCE_PEAK = 2.0 ** -15  # a clip whose peak stays below one 16-bit step is treated as silent
MEL_LOG_FLOOR = 1e-5  # log(clamp(mel, 1e-5)) -> values >= -11.5129


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the fix."""


# ---------------------------------------------------------------------------------------------------------------
# Reading and writing files
# ---------------------------------------------------------------------------------------------------------------


def _read(path: str):
    """Decode ``path`` -> (samples float32 [frames, channels], sample rate, container format name)."""
    import soundfile as sf

    if not os.path.isfile(path):
        raise AudioError(f"audio file not found: {path}; check the path (voices are .wav/.flac/.ogg/.mp3 clips)")
    try:
        with sf.SoundFile(path) as f:
            fmt = f.format
            data = f.read(dtype="float32", always_2d=True)  # ints scaled by 2**(bits-1), floats as stored
            sr = f.samplerate
    except (RuntimeError, TypeError) as e:  # soundfile.LibsndfileError is a RuntimeError
        hint = "convert it to 16-bit wav, e.g. `ffmpeg -i IN -ar 24000 -ac 1 OUT.wav`"
        if path.lower().endswith(".mp3") and _libsndfile_version() < (1, 1):
            hint = f"libsndfile {sf.__libsndfile_version__} cannot read mp3: upgrade soundfile (>= 0.12), or {hint}"
        raise AudioError(f"cannot read audio file {path}: {e}; {hint}") from None
    if data.shape[0] == 0:
        raise AudioError(f"audio file {path} holds no samples; record or export the clip again")
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:  # only float files can hold these; a NaN clip would make every later tensor NaN
        raise AudioError(f"audio file {path} holds {bad} NaN or infinite sample(s) of {data.size}: the file is "
                         f"damaged; export the clip again, e.g. `ffmpeg -i IN -ar 24000 -ac 1 -c:a pcm_s16le OUT.wav`")
    return data, sr, fmt


def _libsndfile_version() -> tuple:
    import soundfile as sf

    return tuple(int(p) for p in sf.__libsndfile_version__.split(".")[:2] if p.isdigit())


def load_wav_to_torch(full_path):
    """The original's raw reader: ``(samples, sampling_rate)``, samples a float32 tensor in [-1, 1] (integer PCM
    scaled by its full range), ``[N]`` for a mono file and ``[N, channels]`` otherwise, at the file's own rate."""
    data, sr, _ = _read(os.fspath(full_path))
    return torch.from_numpy(data[:, 0] if data.shape[1] == 1 else data), sr


def load_audio(audiopath, sampling_rate: int, *, allow_silent: bool = False) -> torch.Tensor:
    """Read an audio file as mono float32 ``[1, N]`` at ``sampling_rate``, clipped to [-1, 1].

    Multi-channel files are averaged to mono. A silent file is an error (a voice clip must hold speech) unless
    ``allow_silent`` (e.g. reading back generated output); a file holding NaN or infinite samples always is.
    """
    path = os.fspath(audiopath)
    data, sr, fmt = _read(path)
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # [N]
    peak = float(np.abs(mono).max())
    if peak < SILENCE_PEAK and not allow_silent:
        raise AudioError(f"audio file {path} is silent (peak {peak:.2e}); use a clip with speech in it")
    audio = torch.from_numpy(np.ascontiguousarray(mono))  # [N]
    if sr != sampling_rate:
        if fmt == "MP3":  # the original decoded mp3 with librosa.load, which resamples with soxr (HQ)
            audio = torch.from_numpy(_soxr_resample(mono, sr, sampling_rate))
        else:
            audio = resample(audio, sr, sampling_rate)
    return _finish(audio, path)


def _finish(audio: torch.Tensor, path: str) -> torch.Tensor:
    """[N] -> [1, N] clipped to [-1, 1]; warns (as the original did) about badly overdriven clips."""
    if float(audio.abs().max()) > 2:
        warnings.warn(f"audio file {path} peaks at {float(audio.abs().max()):.2f} (> 2): clipped to [-1, 1]; "
                      "check its gain", stacklevel=3)
    return audio.clamp(-1, 1).unsqueeze(0)


def _soxr_resample(x: np.ndarray, orig_sr: int, new_sr: int) -> np.ndarray:
    """soxr HQ, zero-padded/trimmed to ceil(N * (new / orig)) samples, as librosa.resample(res_type='soxr_hq')."""
    import soxr

    y = soxr.resample(x, orig_sr, new_sr, quality="HQ")
    n = int(math.ceil(x.shape[-1] * (new_sr / orig_sr)))  # librosa's rounding: 22050 * (24000 / 44100) -> 12001
    return np.pad(y, (0, max(0, n - y.shape[-1])))[:n].astype(np.float32)


def save_wav(path, audio: torch.Tensor, sample_rate: int, subtype: str = "FLOAT", comment: str | None = None) -> str:
    """Write ``audio`` ([N], [1, N] or [1, 1, N] mono; [C, N] multi-channel) atomically; returns the path.

    The file appears complete or not at all: the WAV is encoded in memory, written to a temporary file beside ``path``
    and renamed. A failing write (a full disk, a file-size limit) raises the operating system's ``OSError`` and
    leaves nothing behind. ``subtype`` is a soundfile subtype ("FLOAT" = 32-bit float, as the original's
    torchaudio.save wrote; "PCM_16"); ``comment`` goes into the WAV's comment field.
    """
    import io

    import soundfile as sf

    path = os.fspath(path)
    data = audio.detach().to("cpu", torch.float32)
    while data.dim() > 2 and data.shape[0] == 1:
        data = data[0]
    if data.dim() not in (1, 2):
        raise ValueError(f"save_wav wants audio shaped [N] or [channels, N], got {tuple(audio.shape)}")
    data = data.numpy().T if data.dim() == 2 else data.numpy()  # soundfile wants [frames, channels]
    buf = io.BytesIO()
    channels = 1 if data.ndim == 1 else data.shape[1]
    with sf.SoundFile(buf, "w", sample_rate, channels, subtype=subtype, format="WAV") as f:
        if comment:
            f.comment = comment
        f.write(data)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # A fresh hidden name beside the target (same file system, so the rename is atomic); open() applies the umask.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(buf.getbuffer())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


# ---------------------------------------------------------------------------------------------------------------
# Resampling: band-limited sinc interpolation (J. O. Smith, "Digital Audio Resampling"), the kernel of the
# original's torchaudio.functional.resample with its defaults.
# ---------------------------------------------------------------------------------------------------------------


def _sinc_kernel(orig: int, new: int, zeros: int, rolloff: float, dtype, device):
    """Polyphase kernel [new, 1, 2*width + orig] for rates already divided by their gcd, and its half width."""
    cutoff = min(orig, new) * rolloff  # anti-aliasing low-pass, in units of the reduced rates
    width = math.ceil(zeros * orig / cutoff)  # taps each side, enough for `zeros` zero crossings
    taps = torch.arange(-width, width + orig, dtype=dtype, device=device)[None, None] / orig  # [1, 1, K]
    phase = torch.arange(0, -new, -1, dtype=dtype, device=device)[:, None, None] / new  # [new, 1, 1]
    t = ((phase + taps) * cutoff).clamp_(-zeros, zeros)  # [new, 1, K] time in zero crossings
    window = torch.cos(t * math.pi / zeros / 2) ** 2  # Hann window over +-zeros crossings
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype, device=device), t.sin() / t)
    return sinc * (window * (cutoff / orig)), width


def resample(wav: torch.Tensor, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Resample ``wav`` [..., N] from ``orig_freq`` to ``new_freq`` Hz -> [..., ceil(N * new / orig)]."""
    if orig_freq <= 0 or new_freq <= 0 or int(orig_freq) != orig_freq or int(new_freq) != new_freq:
        raise ValueError(f"sample rates must be positive integers, got {orig_freq} -> {new_freq}")
    if orig_freq == new_freq:
        return wav
    if not wav.is_floating_point():
        raise TypeError(f"resample needs a floating point waveform, got {wav.dtype}")
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, rolloff, wav.dtype, wav.device)
    shape = wav.shape
    x = F.pad(wav.reshape(-1, shape[-1]), (width, width + orig))  # [B, N + 2*width + orig]
    y = F.conv1d(x[:, None], kernel, stride=orig)  # [B, new, frames]
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # interleave the phases -> [B, frames * new]
    # Output length computed in float32 as torchaudio does (it differs from exact ceil only for huge inputs).
    n_out = int(torch.ceil(torch.as_tensor(new * shape[-1] / orig, dtype=torch.float32)))
    return y[:, :n_out].reshape(shape[:-1] + (-1,))


# ---------------------------------------------------------------------------------------------------------------
# Mel spectrograms
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool) -> np.ndarray:
    """librosa filter bank [n_mels, n_fft // 2 + 1] with Slaney area normalisation."""
    import librosa.filters

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, htk=htk, norm="slaney")


def mel_filters(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float, htk: bool) -> torch.Tensor:
    """Float32 copy of the cached filter bank, [n_mels, n_fft // 2 + 1]."""
    return torch.from_numpy(_mel_filters(sr, n_fft, n_mels, float(fmin), float(fmax), htk)).float()


def _stft(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """[B, N] fp32 -> complex [B, n_fft // 2 + 1, frames], frames = N // hop + 1 (centered, reflect padding)."""
    return torch.stft(x, n_fft, hop_length=hop, win_length=window.shape[0], window=window, center=True,
                      pad_mode="reflect", normalized=False, onesided=True, return_complex=True)


def _as_batch(wav: torch.Tensor) -> torch.Tensor:
    """[B, N] or [B, 1, N] -> [B, N] fp32."""
    if wav.dim() == 3 and wav.shape[1] == 1:
        wav = wav.squeeze(1)
    if wav.dim() != 2:
        raise ValueError(f"mel spectrogram wants mono audio shaped [batch, samples] or [batch, 1, samples], "
                         f"got {tuple(wav.shape)}; use load_audio(...) which returns [1, N]")
    return wav.float()


def _load_mel_norms(path, n_mels: int) -> torch.Tensor:
    norms = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(norms, torch.Tensor) or tuple(norms.shape) != (n_mels,):
        raise ValueError(f"mel norm file {path} must hold a tensor of shape [{n_mels}], got "
                         f"{getattr(norms, 'shape', type(norms).__name__)}")
    return norms.float()


class TorchMelSpectrogram(nn.Module):
    """[B, N] (or [B, 1, N]) waveform at 22.05 kHz -> [B, n_mel_channels, N // hop + 1] normalised log mel (fp32)."""

    def __init__(self, filter_length=1024, hop_length=256, win_length=1024, n_mel_channels=80, mel_fmin=0,
                 mel_fmax=8000, sampling_rate=22050, normalize=False, mel_norm_file=DEFAULT_MEL_NORM_FILE):
        super().__init__()
        self.filter_length = filter_length
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mel_channels = n_mel_channels
        self.mel_fmin = mel_fmin
        self.mel_fmax = mel_fmax
        self.sampling_rate = sampling_rate
        self.normalize = normalize  # divide the STFT by the window's L2 norm (torchaudio normalized=True)
        self.mel_norm_file = mel_norm_file
        # Buffers follow .to(device) but stay out of state dicts (no checkpoint holds them).
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        fb = mel_filters(sampling_rate, filter_length, n_mel_channels, mel_fmin, mel_fmax, htk=True)
        self.register_buffer("mel_basis", fb, persistent=False)  # [n_mels, n_freqs]
        norms = None if mel_norm_file is None else _load_mel_norms(mel_norm_file, n_mel_channels)
        self.register_buffer("mel_norms", norms, persistent=False)  # [n_mels] or None

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = _as_batch(inp)  # [B, N]
        window, basis = self.window.to(x.device), self.mel_basis.to(x.device)
        spec = _stft(x, self.filter_length, self.hop_length, window)  # [B, F, T] complex
        if self.normalize:
            spec = spec / window.pow(2).sum().sqrt()
        power = spec.abs().pow(2)  # [B, F, T]
        mel = torch.matmul(basis, power)  # [B, n_mels, T]
        mel = torch.log(torch.clamp(mel, min=MEL_LOG_FLOOR))
        if self.mel_norms is not None:
            mel = mel / self.mel_norms.to(x.device)[None, :, None]
        return mel


def dynamic_range_compression(x: torch.Tensor, C=1, clip_val=MEL_LOG_FLOOR) -> torch.Tensor:
    return torch.log(torch.clamp(x, min=clip_val) * C)


def dynamic_range_decompression(x: torch.Tensor, C=1) -> torch.Tensor:
    return torch.exp(x) / C


def denormalize_tacotron_mel(norm_mel: torch.Tensor) -> torch.Tensor:
    """[-1, 1] diffusion-space mel -> log mel."""
    return ((norm_mel + 1) / 2) * (TACOTRON_MEL_MAX - TACOTRON_MEL_MIN) + TACOTRON_MEL_MIN


def normalize_tacotron_mel(mel: torch.Tensor) -> torch.Tensor:
    """log mel -> [-1, 1] diffusion-space mel."""
    return 2 * ((mel - TACOTRON_MEL_MIN) / (TACOTRON_MEL_MAX - TACOTRON_MEL_MIN)) - 1


class TacotronSTFT(nn.Module):
    """Log-magnitude mel with librosa's Slaney mel scale: [B, N] in [-1, 1] -> [B, n_mel_channels, N // hop + 1]."""

    def __init__(self, filter_length=1024, hop_length=256, win_length=1024, n_mel_channels=80, sampling_rate=22050,
                 mel_fmin=0.0, mel_fmax=8000.0):
        super().__init__()
        if win_length > filter_length:
            raise ValueError(f"win_length ({win_length}) must not exceed filter_length ({filter_length})")
        self.filter_length = filter_length
        self.hop_length = hop_length
        self.win_length = win_length
        self.n_mel_channels = n_mel_channels
        self.sampling_rate = sampling_rate
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        fb = mel_filters(sampling_rate, filter_length, n_mel_channels, mel_fmin, mel_fmax, htk=False)
        self.register_buffer("mel_basis", fb, persistent=False)  # [n_mels, n_freqs]

    def spectral_normalize(self, magnitudes: torch.Tensor) -> torch.Tensor:
        return dynamic_range_compression(magnitudes)

    def spectral_de_normalize(self, magnitudes: torch.Tensor) -> torch.Tensor:
        return dynamic_range_decompression(magnitudes)

    def mel_spectrogram(self, y: torch.Tensor) -> torch.Tensor:
        y = _as_batch(y)
        lo, hi = float(y.min()), float(y.max())
        if lo < -10 or hi > 10:
            raise ValueError(f"waveform out of range [{lo:.3g}, {hi:.3g}]: expected samples in [-1, 1] "
                             "(load audio with load_audio, which scales it)")
        y = y.clamp(-1, 1)
        window, basis = self.window.to(y.device), self.mel_basis.to(y.device)
        magnitudes = _stft(y, self.filter_length, self.hop_length, window).abs()  # [B, F, T]
        return self.spectral_normalize(torch.matmul(basis, magnitudes))  # [B, n_mels, T]

    forward = mel_spectrogram


def univnet_stft() -> TacotronSTFT:
    """The 24 kHz, 100-band front end of the diffusion decoder and vocoders."""
    return TacotronSTFT(1024, 256, 1024, 100, 24000, 0, 12000)


def wav_to_univnet_mel(wav: torch.Tensor, do_normalization=False, device=None, stft=None) -> torch.Tensor:
    """[B, N] 24 kHz waveform -> [B, 100, N // 256 + 1] log mel (scaled to [-1, 1] if ``do_normalization``).

    ``device`` defaults to the waveform's; pass a prebuilt ``stft`` (``univnet_stft()``) to reuse its filters.
    """
    device = wav.device if device is None else torch.device(device)
    stft = (univnet_stft() if stft is None else stft).to(device)
    mel = stft.mel_spectrogram(wav.to(device))
    return normalize_tacotron_mel(mel) if do_normalization else mel
