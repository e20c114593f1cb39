"""Audio front end: load_audio, resampling, save_wav and the two mels, against the original (fixtures) and librosa.

Tolerances: load_audio and resampling are the original's algorithms in the same precision, compared at 1e-6 abs
(measured: bit-identical). Log mels: 1e-4 abs (measured <= 6e-5: torch.stft vs torchaudio / conv1d STFT, fp32).
"""
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from tortoise.utils import audio as A
from tortoise.utils.audio import AudioError, TacotronSTFT, TorchMelSpectrogram, load_audio, resample, save_wav

FIXTURES = os.path.join(os.path.dirname(__file__), "parity", "fixtures", "frontend")
MEL_ATOL = 1e-4
WAVE_ATOL = 1e-6


@pytest.fixture(scope="module")
def mel_fx():
    return torch.load(os.path.join(FIXTURES, "mel.pt"), weights_only=True)


@pytest.fixture(scope="module")
def audio_fx():
    return torch.load(os.path.join(FIXTURES, "audio.pt"), weights_only=True)


def _tone(sr: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# --- parity with the original ----------------------------------------------------------------------------------


def test_load_audio_equals_the_originals(audio_fx, tmp_path):
    assert "mp3_44k" in audio_fx["names"] and "wav24_48k" in audio_fx["names"]
    for name, data, suffix, rates, outputs in zip(audio_fx["names"], audio_fx["files"], audio_fx["suffixes"],
                                                  audio_fx["rates"], audio_fx["outputs"]):
        path = tmp_path / (name + suffix)
        path.write_bytes(data.numpy().tobytes())
        for rate, want in zip(rates, outputs):
            got = load_audio(str(path), rate)
            assert got.dtype == torch.float32 and got.shape == want.shape, (name, rate)
            torch.testing.assert_close(got, want, atol=WAVE_ATOL, rtol=0, msg=f"{name} at {rate}")


def test_torch_mel_equals_the_originals(mel_fx):
    mel = TorchMelSpectrogram()
    torch.testing.assert_close(mel(mel_fx["ar_wavs"]), mel_fx["ar_mel"], atol=MEL_ATOL, rtol=0)
    torch.testing.assert_close(mel(mel_fx["ar_long"][:, None]), mel_fx["ar_long_mel"], atol=MEL_ATOL, rtol=0)
    no_norms = TorchMelSpectrogram(mel_norm_file=None)(mel_fx["ar_wavs"])
    torch.testing.assert_close(no_norms, mel_fx["ar_mel_no_norms"], atol=MEL_ATOL, rtol=0)
    normalized = TorchMelSpectrogram(normalize=True)(mel_fx["ar_wavs"])
    torch.testing.assert_close(normalized, mel_fx["ar_mel_normalized"], atol=MEL_ATOL, rtol=0)
    assert torch.equal(mel.mel_norms, mel_fx["mel_norms"])


def test_univnet_mel_equals_the_originals(mel_fx):
    wav = mel_fx["univnet_wav"]
    torch.testing.assert_close(A.wav_to_univnet_mel(wav), mel_fx["univnet_mel"], atol=MEL_ATOL, rtol=0)
    got = A.wav_to_univnet_mel(wav, do_normalization=True, device="cpu", stft=A.univnet_stft())
    torch.testing.assert_close(got, mel_fx["univnet_mel_normalized"], atol=MEL_ATOL, rtol=0)


def test_filter_bank_equals_torchaudios(mel_fx):
    fb = TorchMelSpectrogram().mel_basis.T  # [513, 80]
    torch.testing.assert_close(fb, mel_fx["torchaudio_fbank"], atol=1e-6, rtol=1e-5)


# --- against librosa directly -----------------------------------------------------------------------------------


def test_filter_banks_are_librosas():
    import librosa

    htk = librosa.filters.mel(sr=22050, n_fft=1024, n_mels=80, fmin=0, fmax=8000, htk=True, norm="slaney")
    slaney = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=100, fmin=0, fmax=12000, htk=False, norm="slaney")
    assert torch.equal(TorchMelSpectrogram().mel_basis, torch.from_numpy(htk).float())
    assert torch.equal(A.univnet_stft().mel_basis, torch.from_numpy(slaney).float())
    assert not torch.allclose(TorchMelSpectrogram(sampling_rate=24000, mel_fmax=12000, n_mel_channels=100,
                                                  mel_norm_file=None).mel_basis,
                              A.univnet_stft().mel_basis)  # the two scales really differ


def test_mel_power_matches_librosa_melspectrogram(mel_fx):
    import librosa

    x = mel_fx["ar_long"][0].numpy().astype(np.float64)
    ref = librosa.feature.melspectrogram(y=x, sr=22050, n_fft=1024, hop_length=256, win_length=1024, power=2.0,
                                         center=True, pad_mode="reflect", n_mels=80, fmax=8000, htk=True,
                                         norm="slaney")
    ours = TorchMelSpectrogram(mel_norm_file=None)(mel_fx["ar_long"])[0]
    torch.testing.assert_close(ours, torch.log(torch.from_numpy(ref).float().clamp(min=1e-5)), atol=MEL_ATOL, rtol=0)


def test_univnet_magnitude_matches_librosa_stft(mel_fx):
    import librosa

    x = mel_fx["univnet_wav"][0].numpy().astype(np.float64)
    mag = np.abs(librosa.stft(x, n_fft=1024, hop_length=256, win_length=1024, center=True, pad_mode="reflect"))
    fb = librosa.filters.mel(sr=24000, n_fft=1024, n_mels=100, fmin=0, fmax=12000, norm="slaney")
    ref = torch.log(torch.from_numpy(fb @ mag).float().clamp(min=1e-5))
    torch.testing.assert_close(A.wav_to_univnet_mel(mel_fx["univnet_wav"])[0], ref, atol=MEL_ATOL, rtol=0)


# --- mel modules --------------------------------------------------------------------------------------------------


def test_mel_buffers_follow_the_module_and_stay_out_of_state_dicts():
    mel = TorchMelSpectrogram()
    names = {n for n, _ in mel.named_buffers()}
    assert names == {"window", "mel_basis", "mel_norms"}
    assert mel.state_dict() == {}
    moved = mel.to("meta")
    assert all(b.device.type == "meta" for b in moved.buffers())


def test_mel_computes_in_fp32_for_half_input(mel_fx):
    mel = TorchMelSpectrogram()
    x = mel_fx["ar_wavs"]
    out = mel(x.to(torch.bfloat16))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mel(x.to(torch.bfloat16).float()))


def test_mel_shapes():
    x = torch.zeros(3, 22050)
    assert TorchMelSpectrogram()(x).shape == (3, 80, 22050 // 256 + 1)
    assert A.wav_to_univnet_mel(torch.zeros(2, 1, 24000)).shape == (2, 100, 24000 // 256 + 1)
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        TorchMelSpectrogram()(torch.zeros(22050))


def test_tacotron_stft_rejects_unscaled_audio():
    with pytest.raises(ValueError, match="expected samples in"):
        TacotronSTFT(1024, 256, 1024, 100, 24000, 0, 12000).mel_spectrogram(torch.full((1, 4096), 300.0))


def test_tacotron_mel_normalisation_round_trip():
    mel = torch.linspace(A.TACOTRON_MEL_MIN, A.TACOTRON_MEL_MAX, 50)
    norm = A.normalize_tacotron_mel(mel)
    assert norm.min().item() == pytest.approx(-1) and norm.max().item() == pytest.approx(1)
    torch.testing.assert_close(A.denormalize_tacotron_mel(norm), mel)


def test_bad_mel_norm_file_is_named(tmp_path):
    bad = tmp_path / "norms.pth"
    torch.save(torch.ones(7), bad)
    with pytest.raises(ValueError, match="norms.pth"):
        TorchMelSpectrogram(mel_norm_file=str(bad))


# --- resampling -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("src, dst", [(44100, 22050), (16000, 22050), (48000, 24000), (22050, 24000)])
def test_resample_keeps_a_tone(src, dst):
    x = torch.from_numpy(_tone(src, 0.5, freq=1000.0))
    y = resample(x, src, dst)
    assert y.shape == (int(np.ceil(x.shape[0] * dst / src)),)
    want = torch.from_numpy(_tone(dst, 0.5, freq=1000.0))[: y.shape[0]]
    interior = slice(200, y.shape[0] - 200)  # edges see the zero padding
    assert (y[interior] - want[interior]).abs().max() < 2e-3


def test_resample_identity_and_batch():
    x = torch.randn(2, 3, 1000, generator=torch.Generator().manual_seed(0))
    assert resample(x, 16000, 16000) is x
    y = resample(x, 16000, 22050)
    assert y.shape == (2, 3, 1379)
    torch.testing.assert_close(y[1, 2], resample(x[1, 2], 16000, 22050))
    with pytest.raises(ValueError, match="positive integers"):
        resample(x, 16000.5, 22050)


# --- reading every format ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, subtype, ext, tol", [
    ("WAV", "PCM_16", ".wav", 1 / 2 ** 15),
    ("WAV", "PCM_24", ".wav", 1 / 2 ** 23),
    ("WAV", "FLOAT", ".wav", 0),
    ("WAV", "PCM_U8", ".wav", 1 / 2 ** 7),
    ("FLAC", "PCM_16", ".flac", 1 / 2 ** 15),
    ("OGG", "VORBIS", ".ogg", None),
])
def test_load_audio_reads_every_format(tmp_path, fmt, subtype, ext, tol):
    x = _tone(22050, 0.5)
    path = tmp_path / ("clip" + ext)
    sf.write(path, x, 22050, format=fmt, subtype=subtype)
    got = load_audio(path, 22050)
    assert got.shape == (1, x.shape[0]) and got.dtype == torch.float32
    if tol is None:  # lossy: compare energy
        assert abs(got.pow(2).mean().sqrt().item() - 0.5 / np.sqrt(2)) < 0.02
    else:
        assert (got[0] - torch.from_numpy(x)).abs().max().item() <= tol


def test_load_audio_reads_mp3(audio_fx, tmp_path):
    i = audio_fx["names"].index("mp3_44k")
    path = tmp_path / "clip.mp3"
    path.write_bytes(audio_fx["files"][i].numpy().tobytes())
    assert sf.info(str(path)).format == "MP3"
    got = load_audio(path, 22050)
    assert got.shape == (1, 11025) and got.abs().max() > 0.1


def test_load_audio_mixes_stereo_to_mono(tmp_path):
    left, right = _tone(16000, 0.3, 300.0, 0.4), _tone(16000, 0.3, 700.0, 0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    got = load_audio(path, 16000)
    torch.testing.assert_close(got[0], torch.from_numpy((left + right) / 2))


def test_load_audio_clips_to_unit_range(tmp_path):
    path = tmp_path / "loud.wav"
    sf.write(path, 1.5 * _tone(22050, 0.2, amp=1.0), 22050, subtype="FLOAT")
    got = load_audio(path, 22050)
    assert got.max().item() == 1.0 and got.min().item() == -1.0


def test_overdriven_audio_warns(tmp_path):
    path = tmp_path / "very_loud.wav"
    sf.write(path, 3 * _tone(22050, 0.2, amp=1.0), 22050, subtype="FLOAT")
    with pytest.warns(UserWarning, match="very_loud.wav"):
        load_audio(path, 24000)


# --- errors -----------------------------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    with pytest.raises(AudioError, match="not found: .*nope.wav"):
        load_audio(tmp_path / "nope.wav", 22050)


def test_unreadable_file_is_named_with_the_fix(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="cannot read audio file .*garbage.wav.*ffmpeg"):
        load_audio(path, 22050)


def test_mp3_on_old_libsndfile_says_to_upgrade(tmp_path, monkeypatch):
    path = tmp_path / "clip.mp3"
    path.write_bytes(b"not an mp3 either" * 10)
    monkeypatch.setattr(sf, "__libsndfile_version__", "1.0.31")
    with pytest.raises(AudioError, match="libsndfile 1.0.31 cannot read mp3: upgrade soundfile"):
        load_audio(path, 22050)


def test_empty_file_is_named(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 22050)
    with pytest.raises(AudioError, match="empty.wav holds no samples"):
        load_audio(path, 22050)


def test_silent_file_is_named(tmp_path):
    path = tmp_path / "silent.flac"
    sf.write(path, np.zeros(4000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="silent.flac is silent"):
        load_audio(path, 22050)
    assert load_audio(path, 22050, allow_silent=True).abs().max().item() == 0.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused_naming_the_file(tmp_path, bad):
    """A float wav holding NaN or inf would turn every tensor downstream into NaN: refused, in one line."""
    path = tmp_path / "damaged.wav"
    wave = (0.3 * np.sin(np.arange(8000) / 10)).astype(np.float32)
    wave[1234] = bad
    sf.write(path, wave, 22050, subtype="FLOAT")
    for kw in ({}, {"allow_silent": True}):
        with pytest.raises(AudioError, match="damaged.wav holds 1 NaN or infinite sample") as e:
            load_audio(path, 22050, **kw)
        assert "\n" not in str(e.value) and "export the clip again" in str(e.value)


def test_audio_error_is_a_value_error():
    assert issubclass(AudioError, ValueError)


# --- writing ----------------------------------------------------------------------------------------------------


def test_save_wav_round_trip_and_is_atomic(tmp_path):
    x = torch.from_numpy(_tone(24000, 0.25))
    path = tmp_path / "out" / "speech.wav"
    assert save_wav(path, x[None, None], 24000) == str(path)
    back, sr = sf.read(path, dtype="float32")
    assert sr == 24000 and sf.info(str(path)).subtype == "FLOAT"
    np.testing.assert_array_equal(back, x.numpy())
    assert os.listdir(path.parent) == ["speech.wav"]  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # an ordinary file, not a private temp file


def test_save_wav_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.wav"
    save_wav(path, torch.zeros(100), 24000, subtype="PCM_16")
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_wav(path, torch.zeros(100), 24000, subtype="NOT_A_SUBTYPE")
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["keep.wav"]
    with pytest.raises(ValueError, match=r"\[N\]"):
        save_wav(path, torch.zeros(2, 2, 10), 24000)


# --- hygiene ----------------------------------------------------------------------------------------------------


def test_no_torchaudio_and_no_librosa_at_import():
    code = ("import sys, tortoise.utils.audio, tortoise.utils.tokenizer, tortoise.utils.text;"
            "assert 'torchaudio' not in sys.modules; assert 'librosa' not in sys.modules;"
            "import torch; tortoise.utils.audio.TorchMelSpectrogram()(torch.zeros(1, 4096));"
            "assert 'torchaudio' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_arch_util_reexports_the_mel():
    from tortoise.models import arch_util

    assert arch_util.TorchMelSpectrogram is TorchMelSpectrogram
    assert arch_util.DEFAULT_MEL_NORM_FILE == A.DEFAULT_MEL_NORM_FILE
