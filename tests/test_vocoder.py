"""UnivNet vocoder: parity with the original tortoise-tts 3.0.0 (fixtures from tests/parity/make_vocoder_fixtures.py),
the released weight-normed checkpoint format, and the fast LVC / transposed-conv kernels against plain definitions."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import load_parity_fixture
from parity.weight_recipe import checksum, recipe_weights  # noqa: F401  (test_hifigan imports them too)
from tortoise.models.vocoder import (LVCBlock, UnivNetGenerator, conv_transpose1d, fold_weight_norm,
                                     location_variable_convolution)

TINY = dict(noise_dim=8, channel_size=4, dilations=[1, 3], strides=[2, 4], hop_length=8, n_mel_channels=12)


def assert_close(actual, expected, rel=1e-5):
    """Max abs error within rel x the expected output's scale (max |expected|)."""
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"max error {err:.3g} > {rel:g} x scale {scale:.3g}"


def weight_normed(model):
    """A copy of ``model`` with torch's own (legacy) weight norm on every conv: its state dict is the released
    format (``weight_g`` / ``weight_v``)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.ConvTranspose1d)):
            nn.utils.weight_norm(module)
    return model


@pytest.fixture(scope="module")
def univnet_case():
    return load_parity_fixture("vocoder", "univnet.pt")


@pytest.fixture(scope="module")
def univnet(univnet_case):
    sd = recipe_weights(univnet_case["keys"], univnet_case["seed"])
    assert checksum(sd) == pytest.approx(univnet_case["checksum"], rel=1e-12)
    model = UnivNetGenerator()
    model.load_state_dict(sd, strict=True)  # released layout: weight_g / weight_v, folded on load
    model.eval(inference=True)
    return model


def test_released_keys_are_the_originals(univnet_case):
    ours = UnivNetGenerator().state_dict()
    released = [k for k, _ in univnet_case["keys"]]
    assert {k.replace("weight_g", "weight").replace("weight_v", "weight") for k in released} == set(ours)
    assert any(k.endswith("weight_g") for k in released)
    mine = UnivNetGenerator().released_state_dict()
    assert {k: list(v.shape) for k, v in mine.items()} == {k: list(s) for k, s in univnet_case["keys"]}


def test_inference_matches_original(univnet, univnet_case):
    out = univnet.inference(univnet_case["c"], univnet_case["z"])
    assert out.shape == (2, 1, 20 * 256)
    assert_close(out, univnet_case["out"])


def test_inference_draws_the_originals_noise(univnet, univnet_case):
    torch.manual_seed(univnet_case["noise_seed"])
    assert_close(univnet.inference(univnet_case["c"]), univnet_case["out_own_noise"])


def test_released_checkpoint_loads_through_registry_converter(univnet_case):
    sd = recipe_weights(univnet_case["keys"], univnet_case["seed"])
    converted = UnivNetGenerator.convert_checkpoint(sd)
    model = UnivNetGenerator()
    model.load_state_dict(converted, strict=True)
    assert set(converted) == set(model.state_dict())


def test_weight_norm_fold_is_exact():
    torch.manual_seed(0)
    plain = UnivNetGenerator(**TINY).eval()
    normed = weight_normed(plain)
    with torch.no_grad():  # make g differ from ||v|| so the fold matters
        for module in normed.modules():
            if hasattr(module, "weight_g"):
                module.weight_g.mul_(1.7)
    released = normed.state_dict()
    assert any(k.endswith("weight_v") for k in released)
    ours = UnivNetGenerator(**TINY)
    ours.load_state_dict(released, strict=True)
    for module in normed.modules():
        if hasattr(module, "weight_g"):
            nn.utils.remove_weight_norm(module)
    reference = normed.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, reference[key]), key


def test_unpaired_weight_norm_key_is_an_error():
    sd = {"conv.weight_v": torch.ones(2, 1, 1)}
    with pytest.raises(KeyError, match="weight_g"):
        fold_weight_norm(sd)


def naive_lvc(x, kernel, bias, hop):
    """Definition: out[b, o, l*hop + s] = bias[b, o, l] + sum_{i,k} x_pad[b, i, l*hop + s + k] kernel[b, i, o, k, l]."""
    batch, _, length = x.shape
    taps = kernel.shape[3]
    xp = F.pad(x, ((taps - 1) // 2, (taps - 1) // 2))
    out = torch.zeros(batch, kernel.shape[2], length, dtype=torch.float64)
    for t in range(length):
        l = t // hop
        window = xp[:, :, t:t + taps].double()                              # (B, C_in, K)
        out[:, :, t] = torch.einsum("bik,biok->bo", window, kernel[..., l].double()) + bias[:, :, l].double()
    return out


def test_location_variable_convolution_matches_definition():
    gen = torch.Generator().manual_seed(3)
    batch, c_in, c_out, taps, frames, hop = 2, 3, 6, 3, 5, 4
    x = torch.randn(batch, c_in, frames * hop, generator=gen)
    kernel = torch.randn(batch, c_in, c_out, taps, frames, generator=gen)
    bias = torch.randn(batch, c_out, frames, generator=gen)
    block = LVCBlock(c_in, 10, stride=2)
    out = block.location_variable_convolution(x, kernel, bias, hop_size=hop)
    torch.testing.assert_close(out.double(), naive_lvc(x, kernel, bias, hop), rtol=0, atol=1e-5)
    frame_major = location_variable_convolution(x, kernel.permute(0, 4, 3, 2, 1), bias.transpose(1, 2), hop)
    assert frame_major.shape == (batch, frames, c_out, hop)


@pytest.mark.parametrize("stride,kernel,padding,output_padding", [(8, 16, 4, 0), (4, 8, 2, 0), (3, 6, 2, 1),
                                                                  (2, 5, 1, 1), (2, 4, 1, 0)])
def test_conv_transpose1d_matches_torch(stride, kernel, padding, output_padding):
    torch.manual_seed(stride * kernel)
    conv = nn.ConvTranspose1d(5, 7, kernel, stride, padding=padding, output_padding=output_padding)
    x = torch.randn(2, 5, 11)
    with torch.no_grad():
        torch.testing.assert_close(conv_transpose1d(x, conv), conv(x), rtol=0, atol=1e-5)


def test_tiny_model_shapes_and_batch_independence():
    torch.manual_seed(1)
    model = UnivNetGenerator(**TINY).eval()
    c = torch.randn(3, 12, 7) - 5
    z = torch.randn(3, 8, 17)
    out = model.inference(c, z)
    assert out.shape == (3, 1, 7 * 8)
    assert out.abs().max() <= 1
    single = model.inference(c[1:2], z[1:2])
    torch.testing.assert_close(out[1:2], single, rtol=0, atol=1e-6)


def test_kernel_predictor_forward_keeps_original_layout():
    torch.manual_seed(2)
    block = LVCBlock(4, 12, stride=2, dilations=[1, 3])
    c = torch.randn(1, 12, 5)
    kernels, bias = block.kernel_predictor(c)
    assert kernels.shape == (1, 2, 4, 8, 3, 5) and bias.shape == (1, 2, 8, 5)
    # the original's layout: kernel_conv output channels ordered (layers, C_in, C_out, K), frames last
    raw = block.kernel_predictor.kernel_conv(block.kernel_predictor._hidden(c)).view(1, 2, 4, 8, 3, 5)
    torch.testing.assert_close(kernels, raw, rtol=0, atol=1e-5)
