"""Building blocks shared by several Tortoise networks.

Parameter names and layouts follow the released checkpoints (the original `tortoise.models.arch_util`), so the
networks built from these blocks load those checkpoints with ``strict=True``. The maths is the original's; the code is
ours and routes attention through ``scaled_dot_product_attention`` wherever the result is the same.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# The mel front end lives with the other audio code; it is reachable here under its original module path.
from tortoise.utils.sound import DEFAULT_MEL_NORM_FILE, TorchMelSpectrogram  # noqa: F401 (re-exported)


def zero_module(module):
    """Zero every parameter of ``module`` in place and return it (initialisation only; checkpoints overwrite it)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 whatever the input dtype, cast back (one numerics policy for half precision)."""

    def forward(self, x):
        # weight and bias too: a model cast to half keeps them in half, and group_norm wants one dtype
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).type(x.dtype)


def normalization(channels):
    """The GroupNorm used throughout Tortoise: 32 groups, fewer for narrow layers, always dividing ``channels``."""
    groups = 32
    if channels <= 16:
        groups = 8
    elif channels <= 64:
        groups = 16
    while channels % groups != 0:
        groups //= 2
    if groups <= 2:
        raise ValueError(f"normalization: {channels} channels leave only {groups} groups; use a multiple of 8")
    return GroupNorm32(groups, channels)


class RelativePositionBias(nn.Module):
    """T5-style bucketed relative position bias, added to attention logits (``scale`` times a learned per-head value).

    Buckets: half for each direction when not causal; exact distances below ``num_buckets // 2``, logarithmic up to
    ``max_distance`` beyond (Raffel et al. 2020, section 2.1).
    """

    def __init__(self, scale, causal=False, num_buckets=32, max_distance=128, heads=8):
        super().__init__()
        self.scale = scale
        self.causal = causal
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    @staticmethod
    def _relative_position_bucket(relative_position, causal=True, num_buckets=32, max_distance=128):
        n = -relative_position
        if causal:
            offset = torch.zeros_like(n)
            n = n.clamp(min=0)
        else:
            num_buckets //= 2
            offset = (n < 0).long() * num_buckets
            n = n.abs()
        max_exact = num_buckets // 2
        # log-spaced buckets for distances >= max_exact (n is clamped to 1 only to keep log() finite where unused)
        scaled = torch.log(n.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact)
        large = (max_exact + (scaled * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
        return offset + torch.where(n < max_exact, n, large)

    def bias(self, i, j, device):
        """Additive bias of shape (1, heads, i, j) for ``i`` queries and ``j`` keys."""
        q_pos = torch.arange(i, dtype=torch.long, device=device)
        k_pos = torch.arange(j, dtype=torch.long, device=device)
        buckets = self._relative_position_bucket(k_pos[None, :] - q_pos[:, None], causal=self.causal,
                                                 num_buckets=self.num_buckets, max_distance=self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0) * self.scale

    def forward(self, qk_dots):
        return qk_dots + self.bias(*qk_dots.shape[-2:], qk_dots.device).to(qk_dots.dtype)


class QKVAttentionLegacy(nn.Module):
    """Multi-head attention over a fused ``[N, H*3*C, T]`` qkv tensor (heads split before q/k/v), as in the checkpoints.

    ``mask`` ([N, T], 1 keep / 0 drop) is applied *after* the softmax, multiplicatively, exactly as the original does;
    without a mask the computation goes through ``scaled_dot_product_attention``.
    """

    def __init__(self, n_heads):
        super().__init__()
        self.n_heads = n_heads

    def forward(self, qkv, mask=None, rel_pos=None):
        bs, width, length = qkv.shape
        if width % (3 * self.n_heads):
            raise ValueError(f"qkv width {width} is not divisible by 3 x {self.n_heads} heads")
        ch = width // (3 * self.n_heads)
        q, k, v = qkv.reshape(bs, self.n_heads, ch * 3, length).split(ch, dim=2)  # each (N, H, C, T)
        q, k, v = q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)  # (N, H, T, C)
        bias = None if rel_pos is None else rel_pos.bias(length, length, qkv.device).to(qkv.dtype)
        if mask is None:  # contiguous (N, H, T, C): CPU's fused attention kernel; strided views fall back to the
            # unfused maths, 2.8x slower for the conditioning encoder's 16 heads x 517 frames on 2 threads
            a = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=bias)
        else:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(ch)  # (N, H, T, T)
            if bias is not None:
                logits = logits + bias
            weight = torch.softmax(logits.float(), dim=-1).type(logits.dtype)
            weight = weight * mask[:, None, None, :].to(weight.dtype)
            a = weight @ v
        return a.transpose(-1, -2).reshape(bs, -1, length)  # (N, H*C, T)


class AttentionBlock(nn.Module):
    """Residual self-attention over the positions of a ``[N, C, ...]`` tensor (GroupNorm, fused 1x1 qkv, 1x1 out)."""

    def __init__(self, channels, num_heads=1, num_head_channels=-1, do_checkpoint=True,
                 relative_pos_embeddings=False):
        super().__init__()
        self.channels = channels
        self.do_checkpoint = do_checkpoint  # kept for signature compatibility; inference never checkpoints
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by num_head_channels {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.attention = QKVAttentionLegacy(self.num_heads)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))
        if relative_pos_embeddings:
            # NB: the checkpoints were trained with `heads=num_heads` (not self.num_heads); keep it that way.
            self.relative_pos_embeddings = RelativePositionBias(scale=(channels // self.num_heads) ** .5,
                                                                causal=False, heads=num_heads, num_buckets=32,
                                                                max_distance=64)
        else:
            self.relative_pos_embeddings = None

    def forward(self, x, mask=None):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        h = self.attention(self.qkv(self.norm(x)), mask, self.relative_pos_embeddings)
        return (x + self.proj_out(h)).reshape(b, c, *spatial)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by ``factor`` along time, optionally followed by a width-5 convolution."""

    def __init__(self, channels, use_conv, out_channels=None, factor=4):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.factor = factor
        if use_conv:
            self.conv = nn.Conv1d(self.channels, self.out_channels, 5, padding=2)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=self.factor, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Downsampling by ``factor`` along time: a strided convolution, or average pooling without one."""

    def __init__(self, channels, use_conv, out_channels=None, factor=4, ksize=5, pad=2):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.op = nn.Conv1d(self.channels, self.out_channels, ksize, stride=factor, padding=pad)
        else:
            if self.channels != self.out_channels:
                raise ValueError("Downsample without a convolution cannot change the channel count")
            self.op = nn.AvgPool1d(kernel_size=factor, stride=factor)

    def forward(self, x):
        return self.op(x)


class ResBlock(nn.Module):
    """Pre-norm residual block (GroupNorm, SiLU, conv) x 2 with optional up/down sampling and a projecting skip."""

    def __init__(self, channels, dropout, out_channels=None, use_conv=False, use_scale_shift_norm=False,
                 up=False, down=False, kernel_size=3):
        super().__init__()
        self.channels = channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        self.use_scale_shift_norm = use_scale_shift_norm
        padding = 1 if kernel_size == 3 else 2
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(),
            nn.Conv1d(channels, self.out_channels, kernel_size, padding=padding))
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            zero_module(nn.Conv1d(self.out_channels, self.out_channels, kernel_size, padding=padding)))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv1d(channels, self.out_channels, kernel_size, padding=padding)
        else:
            self.skip_connection = nn.Conv1d(channels, self.out_channels, 1)

    def forward(self, x):
        if self.updown:
            h = self.h_upd(self.in_layers[:-1](x))
            x = self.x_upd(x)
            h = self.in_layers[-1](h)
        else:
            h = self.in_layers(x)
        return self.skip_connection(x) + self.out_layers(h)


class AudioMiniEncoder(nn.Module):
    """Convolutional + attention encoder of a spectrogram to one ``embedding_dim`` vector (first position)."""

    def __init__(self, spec_dim, embedding_dim, base_channels=128, depth=2, resnet_blocks=2, attn_blocks=4,
                 num_attn_heads=4, dropout=0, downsample_factor=2, kernel_size=3):
        super().__init__()
        self.init = nn.Sequential(nn.Conv1d(spec_dim, base_channels, 3, padding=1))
        ch = base_channels
        res = []
        for _ in range(depth):
            res += [ResBlock(ch, dropout, kernel_size=kernel_size) for _ in range(resnet_blocks)]
            res.append(Downsample(ch, use_conv=True, out_channels=ch * 2, factor=downsample_factor))
            ch *= 2
        self.res = nn.Sequential(*res)
        self.final = nn.Sequential(normalization(ch), nn.SiLU(), nn.Conv1d(ch, embedding_dim, 1))
        self.attn = nn.Sequential(*[AttentionBlock(embedding_dim, num_attn_heads) for _ in range(attn_blocks)])
        self.dim = embedding_dim

    def forward(self, x):
        h = self.attn(self.final(self.res(self.init(x))))
        return h[:, :, 0]
