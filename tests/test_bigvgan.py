"""BigVGAN: parity with NVIDIA's own code (fixture from tests/parity/make_vocoder_fixtures.py --bigvgan-src), loading
a checkpoint directory in NVIDIA's published layout, and the vocoder loader's one call signature."""
import json

import pytest
import torch

from conftest import load_parity_fixture
from test_vocoder import assert_close
from tortoise.models.bigvgan import BigVGAN, kaiser_sinc_filter1d
from tortoise.models.vocoder import VOCODERS, UnivNetGenerator, fold_weight_norm, load_vocoder


@pytest.fixture(scope="module")
def cases():
    return load_parity_fixture("vocoder", "bigvgan.pt")


def write_nvidia_dir(path, config, state_dict):
    """A checkpoint directory as NVIDIA publishes it: config.json + bigvgan_generator.pt ({"generator": sd})."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    torch.save({"generator": state_dict}, path / "bigvgan_generator.pt")
    return path


@pytest.mark.parametrize("index", [0, 1])
def test_matches_nvidia_implementation(cases, index):
    case = cases[index]
    assert any(k.endswith("weight_g") for k in case["state_dict"])
    model = BigVGAN(case["config"]).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    with torch.no_grad():
        out = model(case["mel"])
    assert out.shape == (2, 1, 9 * 256)
    assert_close(out, case["out"])


def test_from_pretrained_reads_nvidia_layout(cases, tmp_path):
    case = cases[0]
    model_dir = write_nvidia_dir(tmp_path / "bigvgan_tiny", case["config"], case["state_dict"])
    model = BigVGAN.from_pretrained(model_dir, use_cuda_kernel=False)
    assert not model.training
    with torch.no_grad():
        assert_close(model(case["mel"]), case["out"])


def test_folded_checkpoint_loads_too(cases, tmp_path):
    case = cases[1]
    model_dir = write_nvidia_dir(tmp_path / "folded", case["config"], fold_weight_norm(case["state_dict"]))
    with torch.no_grad():
        assert_close(BigVGAN.from_pretrained(model_dir)(case["mel"]), case["out"])


def test_load_vocoder_bigvgan_dir_and_bare_file(cases, tmp_path):
    case = cases[0]
    model_dir = write_nvidia_dir(tmp_path / "base", case["config"], case["state_dict"])
    vocoder = load_vocoder("bigvgan_base", model_dir, "cpu")
    assert_close(vocoder(case["mel"]), case["out"])
    # a bare generator file is read with the published config: the tiny weights do not fit it
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_vocoder("bigvgan_base", model_dir / "bigvgan_generator.pt", "cpu")


def test_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        BigVGAN.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="univnet"):
        load_vocoder("hifi", tmp_path)


def test_load_vocoder_univnet_models_dir(tmp_path):
    tiny = dict(noise_dim=8, channel_size=4, dilations=[1, 3], strides=[8, 8, 4])
    torch.manual_seed(0)
    reference = UnivNetGenerator(**tiny).eval()
    normed = UnivNetGenerator(**tiny)
    normed.load_state_dict(reference.state_dict())
    for module in normed.modules():
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
            torch.nn.utils.weight_norm(module)
    torch.save({"model_g": normed.state_dict()}, tmp_path / "vocoder.pth")
    (tmp_path / "config.json").write_text(json.dumps({"vocoder": tiny}))
    vocoder = load_vocoder("univnet", tmp_path, "cpu")
    mel = torch.randn(1, 100, 6) - 5
    torch.manual_seed(3)
    out = vocoder(mel)
    torch.manual_seed(3)
    expected = reference.inference(mel)
    assert out.shape == (1, 1, 6 * 256)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_published_configs():
    for name in ("univnet", "bigvgan_base", "bigvgan"):
        spec = VOCODERS[name]
        assert (spec["sampling_rate"], spec["num_mels"], spec["hop_size"], spec["fmax"]) == (24000, 100, 256, 12000)
    counts = {}
    for name in ("bigvgan_base", "bigvgan"):
        config = VOCODERS[name]["config"]
        assert torch.tensor(config["upsample_rates"]).prod().item() == 256
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in BigVGAN(config).parameters())
    assert 13.5e6 < counts["bigvgan_base"] < 14.5e6 and 112e6 < counts["bigvgan"] < 113e6


def test_kaiser_sinc_filter_is_a_unit_gain_lowpass():
    taps = kaiser_sinc_filter1d(0.25, 0.3, 12).flatten()
    assert taps.shape == (12,) and torch.allclose(taps, taps.flip(0))
    assert taps.sum().item() == pytest.approx(1.0, abs=1e-6)
    response = torch.fft.rfft(taps, 256).abs()
    assert response[-1] < 0.05  # Nyquist strongly attenuated


@pytest.mark.parametrize("length", [50, 97, 300])
def test_chunked_activation_is_exact(monkeypatch, length):
    import tortoise.models.bigvgan as bv
    torch.manual_seed(length)
    act = bv.Activation1d(bv.SnakeBeta(3, alpha_logscale=True))
    with torch.no_grad():
        act.act.alpha.normal_(0, 0.5)
        act.act.beta.normal_(0, 0.5)
    x = torch.randn(2, 3, length)
    monkeypatch.setattr(bv, "ACT_MIN_CHUNK", 16)
    monkeypatch.setattr(bv, "ACT_CHUNK_ELEMENTS", 16)
    with torch.no_grad():
        torch.testing.assert_close(act(x), act.activate(x), rtol=0, atol=0)
