"""HiFi-GAN decoder: parity with the original tortoise-tts 3.0.0 (tests/parity/make_vocoder_fixtures.py), the explicit
hifidecoder.pth key map, and the streaming cross-fade against the original's handle_chunks."""
import pytest
import torch

from conftest import load_parity_fixture
from test_vocoder import assert_close, checksum, recipe_weights
from tortoise.models.hifigan_decoder import (ChunkCrossfader, HifiganGenerator, crossfade, decoded_length,
                                             upsample_latents)
from tortoise.utils.checkpoints import RELEASED_CONFIGS


@pytest.fixture(scope="module")
def cases():
    return load_parity_fixture("vocoder", "hifigan.pt")


def test_released_config_is_the_originals(cases):
    assert cases["full"]["config"] == RELEASED_CONFIGS["hifidecoder"]


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_inference_and_forward_match_original(cases, size):
    case = cases[size]
    sd = case["state_dict"] if size == "tiny" else recipe_weights(case["keys"], case["seed"])
    if size == "full":
        assert checksum(sd) == pytest.approx(case["checksum"], rel=1e-12)
    assert any(k.endswith("weight_g") for k in sd)  # the released (weight-normed) layout
    model = HifiganGenerator(**case["config"]).eval()
    model.load_state_dict(sd, strict=True)
    out = model.inference(case["latents"], case["g"])
    assert out.shape[-1] == decoded_length(case["latents"].shape[1])
    assert_close(out, case["out"])
    with torch.no_grad():
        assert_close(model(case["frames"], case["g"].unsqueeze(-1)), case["out_forward"])


def test_key_map_accepts_xtts_layout_and_new_weight_norm(cases):
    sd = cases["tiny"]["state_dict"]
    remapped = {}
    for key, value in sd.items():
        key = key.replace(".weight_g", ".parametrizations.weight.original0")
        key = key.replace(".weight_v", ".parametrizations.weight.original1")
        remapped["waveform_decoder." + key] = value
    remapped["speaker_encoder.fc.weight"] = torch.zeros(3, 3)
    model = HifiganGenerator(**cases["tiny"]["config"])
    model.load_state_dict(HifiganGenerator.convert_checkpoint(remapped), strict=True)
    reference = HifiganGenerator(**cases["tiny"]["config"])
    reference.load_state_dict(sd, strict=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_key_map_rejects_unknown_keys(cases):
    sd = dict(cases["tiny"]["state_dict"])
    sd["something_else.weight"] = torch.zeros(1)
    model = HifiganGenerator(**cases["tiny"]["config"])
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict(HifiganGenerator.convert_checkpoint(sd), strict=True)


def test_latent_upsampling_length():
    for codes in (1, 6, 40, 100, 250):
        x = upsample_latents(torch.zeros(1, codes, 4))
        assert x.shape[-1] * 256 == decoded_length(codes)


def test_stream_chunks_match_original():
    case = load_parity_fixture("vocoder", "stream.pt")
    fader = ChunkCrossfader(case["overlap"])
    for wav, expected in zip(case["decodes"], case["chunks"]):
        torch.testing.assert_close(fader.push(wav), expected, rtol=0, atol=1e-6)
    assert fader.finish().shape[-1] == case["overlap"]  # the tail the original never emits; ours ends with it


def test_crossfade_is_pure_and_linear():
    tail, new = torch.ones(5), torch.zeros(8)
    out = crossfade(tail, new)
    torch.testing.assert_close(out[:5], torch.linspace(1, 0, 5))
    assert torch.equal(out[5:], torch.zeros(3)) and torch.equal(new, torch.zeros(8))
    with pytest.raises(ValueError, match="overlap"):
        crossfade(torch.ones(9), new)


def test_released_state_dict_round_trips_through_registry(tmp_path, cases):
    from tortoise.utils.checkpoints import load_model
    from tortoise.utils.make_test_models import write_models
    write_models(tmp_path, size="tiny", seed=0, only=["vocoder", "hifidecoder"])
    with pytest.raises(RuntimeError, match="CUDA"):  # saved on CUDA, as the released file: needs map_location
        torch.load(tmp_path / "hifidecoder.pth", weights_only=True)
    sd = torch.load(tmp_path / "hifidecoder.pth", weights_only=True, map_location="cpu")
    assert "cond_layer.weight" in sd and "conv_pre.weight_g" in sd and "conv_pre.weight" not in sd
    assert set(HifiganGenerator(**cases["tiny"]["config"]).released_state_dict()) == set(cases["tiny"]["state_dict"])
    hifi = load_model("hifidecoder", models_dir=tmp_path)
    assert hifi.inference(torch.randn(1, 3, 64), torch.randn(1, 64)).shape == (1, 1, decoded_length(3))
    univnet = load_model("vocoder", models_dir=tmp_path)
    assert univnet.inference(torch.randn(1, 100, 4) - 5).shape == (1, 1, 4 * 256)
