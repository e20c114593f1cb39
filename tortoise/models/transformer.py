"""The DALL-E style transformer CLVP uses when built with ``use_xformers=False`` (not the released configuration).

Same module structure and parameter names as the original ``tortoise.models.transformer``: each layer is a pair of
``LayerScale(PreNorm(attention))`` and ``LayerScale(PreNorm(feed-forward))`` residual branches, held in
``layers.layers``. Attention runs through ``scaled_dot_product_attention``.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _layer_scale_init(depth):
    """LayerScale's initial value for the layer at 1-based ``depth`` (CaiT, Touvron et al. 2021)."""
    if depth <= 18:
        return 0.1
    return 1e-5 if depth <= 24 else 1e-6


class LayerScale(nn.Module):
    """Multiplies a branch's output by a learned per-channel ``scale`` (1, 1, dim)."""

    def __init__(self, dim, depth, fn):
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, 1, dim), _layer_scale_init(depth)))
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(x, **kwargs) * self.scale


class PreNorm(nn.Module):
    """LayerNorm before ``fn``; with ``sandwich`` a second LayerNorm after it."""

    def __init__(self, dim, fn, sandwich=False):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.norm_out = nn.LayerNorm(dim) if sandwich else nn.Identity()
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.norm_out(self.fn(self.norm(x), **kwargs))


class GEGLU(nn.Module):
    """Half the channels times GELU of the other half."""

    def forward(self, x):
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class FeedForward(nn.Module):
    def __init__(self, dim, dropout=0.0, mult=4.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, int(dim * mult * 2)), GEGLU(), nn.Dropout(dropout),
                                 nn.Linear(int(dim * mult), dim))

    def forward(self, x):
        return self.net(x)


class Attention(nn.Module):
    """Multi-head attention from one fused ``to_qkv`` projection (no bias). ``mask`` (B, N) bool masks *keys*:
    they get -finfo.max before the softmax, as in the original; ``causal`` hides later positions the same way."""

    def __init__(self, dim, seq_len, causal=True, heads=8, dim_head=64, dropout=0.0):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.seq_len = seq_len
        self.scale = dim_head ** -0.5
        self.causal = causal
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))

    def forward(self, x, mask=None):
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # each (B, H, N, d)
        keep = None
        if mask is not None:
            keep = mask[:, None, None, :]  # (B, 1, 1, N)
        if self.causal:
            tri = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
            keep = tri if keep is None else keep & tri
        bias = None
        if keep is not None:
            neg = torch.tensor(-torch.finfo(q.dtype).max, dtype=q.dtype, device=x.device)
            bias = torch.where(keep, torch.zeros((), dtype=q.dtype, device=x.device), neg)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class SequentialSequence(nn.Module):
    """Residual (attention, feed-forward) pairs; ``mask`` reaches only the attention branches."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers

    def forward(self, x, mask=None):
        for attn, ff in self.layers:
            x = x + attn(x, mask=mask)
            x = x + ff(x)
        return x


class Transformer(nn.Module):
    def __init__(self, *, dim, depth, seq_len, causal=True, heads=8, dim_head=64, ff_mult=4, attn_dropout=0.0,
                 ff_dropout=0.0, sparse_attn=False, sandwich_norm=False):
        super().__init__()
        if sparse_attn:
            raise ValueError("sparse_attn is not implemented (the original ignores it too); pass sparse_attn=False")
        layers = nn.ModuleList()
        for ind in range(depth):
            attn = Attention(dim, causal=causal, seq_len=seq_len, heads=heads, dim_head=dim_head,
                             dropout=attn_dropout)
            ff = FeedForward(dim, mult=ff_mult, dropout=ff_dropout)
            layers.append(nn.ModuleList([LayerScale(dim, ind + 1, PreNorm(dim, attn, sandwich=sandwich_norm)),
                                         LayerScale(dim, ind + 1, PreNorm(dim, ff, sandwich=sandwich_norm))]))
        self.layers = SequentialSequence(layers)

    def forward(self, x, mask=None):
        """x: (B, N, dim); mask: (B, N) bool keys to attend, or None."""
        return self.layers(x, mask=mask)
