"""The x-transformers subset behind CLVP/CVVP: masking semantics against the original, options, causality."""
import pytest
import torch

from test_clvp import assert_close, load_fixture
from tortoise.models.xtransformers import CheckpointedXTransformerEncoder
from tortoise.models.xtransformers import ContinuousTransformerWrapper, Decoder, Encoder


def test_padding_mask_matches_original_including_fully_masked_queries():
    case = load_fixture("xtransformers_masked.pt")
    model = ContinuousTransformerWrapper(max_seq_len=-1, attn_layers=Encoder(**case["config"])).eval()
    model.load_state_dict(case["state_dict"], strict=True)
    with torch.no_grad():
        assert_close(model(case["x"], mask=case["mask"]), case["out"])
    with torch.enable_grad():  # the out-of-place path used in training gives the same numbers
        assert_close(model(case["x"], mask=case["mask"]).detach(), case["out"])


def test_unsupported_options_are_refused_by_name():
    with pytest.raises(ValueError, match="macaron"):
        Encoder(dim=32, depth=1, heads=2, macaron=True)
    with pytest.raises(ValueError, match="talking_heads"):
        Encoder(dim=32, depth=1, heads=2, attn_talking_heads=True)
    Encoder(dim=32, depth=1, heads=2, macaron=False)  # an unsupported option at its default value is fine


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(max_seq_len=-1, attn_layers=Decoder(dim=32, depth=2, heads=2,
                                                                              rotary_pos_emb=True)).eval()
    x = torch.randn(1, 7, 32)
    y = x.clone()
    y[:, 4:] = torch.randn(1, 3, 32)
    with torch.no_grad():
        a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_checkpointed_encoder_permutes_channels_mid_input():
    torch.manual_seed(0)
    kwargs = dict(max_seq_len=-1, attn_layers=Encoder(dim=32, depth=1, heads=2, rotary_pos_emb=True))
    enc = CheckpointedXTransformerEncoder(**kwargs).eval()
    x = torch.randn(2, 32, 5)  # (B, C, N)
    with torch.no_grad():
        out = enc(x)
        direct = enc.transformer(x.permute(0, 2, 1)).permute(0, 2, 1)
    assert out.shape == (2, 32, 5)
    torch.testing.assert_close(out, direct)
    assert "transformer.attn_layers.layers.0.1.wrap.to_q.weight" in enc.state_dict()


def test_autocast_keeps_the_residual_stream_in_float32():
    torch.manual_seed(0)
    model = ContinuousTransformerWrapper(max_seq_len=-1, attn_layers=Encoder(
        dim=32, depth=2, heads=2, ff_mult=2, use_rmsnorm=True, ff_glu=True, rotary_pos_emb=True)).eval()
    x = torch.randn(2, 6, 32)
    seen = []
    for norms, _, _ in model.attn_layers.layers:
        norms[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert set(seen) == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(out.float(), model(x), atol=0.1, rtol=0.05)
