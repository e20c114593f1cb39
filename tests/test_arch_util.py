"""Shared blocks: half-precision GroupNorm and attention equal to explicit definitions."""
import math

import torch

from tortoise.models.arch_util import AttentionBlock, GroupNorm32, normalization


def test_groupnorm32_computes_in_fp32_for_a_half_model():
    torch.manual_seed(0)
    gn = GroupNorm32(8, 32)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = torch.randn(2, 32, 40)
    ref = torch.nn.functional.group_norm(x, 8, gn.weight, gn.bias, gn.eps)
    half = GroupNorm32(8, 32).to(torch.bfloat16)
    half.load_state_dict(gn.state_dict())
    out = half(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)
    assert torch.equal(gn(x), ref)


def test_normalization_groups():
    assert normalization(16).num_groups == 8 and normalization(64).num_groups == 16
    assert normalization(1024).num_groups == 32 and normalization(80).num_groups == 16


def test_attention_block_equals_explicit_softmax_attention():
    torch.manual_seed(1)
    blk = AttentionBlock(32, num_heads=4)
    with torch.no_grad():
        for p in blk.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 32, 9)
    qkv = blk.qkv(blk.norm(x)).reshape(2, 4, 24, 9)
    q, k, v = qkv[:, :, :8], qkv[:, :, 8:16], qkv[:, :, 16:]
    w = torch.softmax(torch.einsum("bhct,bhcs->bhts", q, k) / math.sqrt(8), dim=-1)
    a = torch.einsum("bhts,bhcs->bhct", w, v).reshape(2, 32, 9)
    torch.testing.assert_close(blk(x), x + blk.proj_out(a), atol=1e-5, rtol=1e-5)
    # a post-softmax multiplicative mask (the original's) drops the masked keys' contributions
    mask = torch.ones(2, 9)
    mask[:, 6:] = 0
    wm = w * mask[:, None, None, :]
    am = torch.einsum("bhts,bhcs->bhct", wm, v).reshape(2, 32, 9)
    torch.testing.assert_close(blk(x, mask), x + blk.proj_out(am), atol=1e-5, rtol=1e-5)
