"""The part of the x-transformers encoder that Tortoise's released CLVP and CVVP use.

The original ships a 1,248-line copy of lucidrains' x-transformers; the released checkpoints exercise one path through
it: a pre-norm encoder of alternating attention and feed-forward layers with RMSNorm, rotary position embeddings on
the first 32 channels of every head (applied to queries, keys *and values*, as the original does), GLU feed-forward
with GELU, no positional embedding table and a final LayerNorm. This module implements that path with the original's
module structure, so parameter names are identical (``attn_layers.layers.0.1.to_q.weight``,
``attn_layers.rotary_pos_emb.inv_freq``, ...), and runs attention through ``scaled_dot_product_attention``.

Options outside that path raise a ``ValueError`` naming the option rather than silently computing something else.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.arch_util import RelativePositionBias  # noqa: F401  (re-exported under the original's path)

DEFAULT_DIM_HEAD = 64

# Keyword arguments of the original's AttentionLayers that this port accepts only at their default value.
_UNSUPPORTED_LAYER_OPTIONS = dict(
    cross_attend=False, only_cross=False, use_scalenorm=False, use_rms_scaleshift_norm=False, use_rezero=False,
    alibi_pos_bias=False, alibi_num_heads=None, alibi_learned=False, position_infused_attn=False,
    custom_layers=None, sandwich_coef=None, par_ratio=None, residual_attn=False, cross_residual_attn=False,
    macaron=False, pre_norm=True, gate_residual=False, scale_residual=False, shift_tokens=0, sandwich_norm=False,
    use_qk_norm_attn=False, qk_norm_attn_seq_len=None, zero_init_branch_output=False)
_ATTN_OPTIONS = ("dim_head", "dropout")
_FF_OPTIONS = ("mult", "glu", "dropout")


def _reject_unsupported(given, supported, what):
    extra = sorted(set(given) - set(supported))
    if extra:
        raise ValueError(f"{what}: option(s) {extra} are not implemented by this port (only the configuration of "
                         f"the released CLVP/CVVP is); use the original tortoise-tts x-transformers for them")


def _split_prefixed(prefix, kwargs):
    """Split ``kwargs`` into those starting with ``prefix`` (prefix removed) and the rest."""
    picked = {k[len(prefix):]: v for k, v in kwargs.items() if k.startswith(prefix)}
    rest = {k: v for k, v in kwargs.items() if not k.startswith(prefix)}
    return picked, rest


# positional embeddings

class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute positions, scaled by dim**-0.5 (unused by the released configs, which use rotary)."""

    def __init__(self, dim, max_seq_len):
        super().__init__()
        self.scale = dim ** -0.5
        self.emb = nn.Embedding(max_seq_len, dim)

    def forward(self, x):
        pos = torch.arange(x.shape[1], device=x.device)
        return self.emb(pos)[None] * self.scale  # (1, N, D)


class RotaryEmbedding(nn.Module):
    """Rotary position angles (Su et al. 2021, RoFormer) for ``dim`` channels; ``inv_freq`` is a checkpoint buffer."""

    def __init__(self, dim):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, max_seq_len, device):
        """Angles of shape (1, 1, max_seq_len, dim): the half-size frequency table repeated twice along channels."""
        t = torch.arange(max_seq_len, device=device).type_as(self.inv_freq)
        freqs = torch.outer(t, self.inv_freq)
        return torch.cat((freqs, freqs), dim=-1)[None, None]

    def cos_sin(self, seq_len, device, dtype):
        """(cos, sin) of the angles, each (seq_len, dim), in ``dtype``: computed once per forward, shared by layers."""
        freqs = self.forward(seq_len, device)[0, 0]
        return freqs.cos().to(dtype), freqs.sin().to(dtype)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(t, freqs):
    """Rotate ``t`` (..., N, d) by the angles ``freqs`` (1, 1, >=N, d), using the last N positions (the original's API)."""
    freqs = freqs[:, :, -t.shape[-2]:]
    return t * freqs.cos() + rotate_half(t) * freqs.sin()


def _rotate_prefix(t, cos, sin):
    """Rotate the first ``cos.shape[-1]`` channels of ``t`` (B, N, ..., d) by the angles (N, r); the rest pass through."""
    r = cos.shape[-1]
    shape = (cos.shape[0],) + (1,) * (t.dim() - 3) + (r,)  # broadcast over the head axes
    head, tail = t[..., :r], t[..., r:]
    rotated = head * cos.view(shape) + rotate_half(head) * sin.view(shape)
    return torch.cat((rotated, tail), dim=-1) if tail.shape[-1] else rotated


def _rotate_prefix_(t, cos, sin):
    """In-place ``_rotate_prefix`` (no autograd): with both halves of the angle table equal, the rotation of
    (x1, x2) is (x1 c - x2 s, x2 c + x1 s) on the first r/2 and next r/2 channels."""
    half = cos.shape[-1] // 2
    shape = (cos.shape[0],) + (1,) * (t.dim() - 3) + (half,)
    c, s = cos[:, :half].reshape(shape), sin[:, :half].reshape(shape)
    x1, x2 = t[..., :half], t[..., half:2 * half]
    x1_old = x1.clone()
    x1.mul_(c).addcmul_(x2, s, value=-1.0)
    x2.mul_(c).addcmul_(x1_old, s)
    return t


# norms and residual

class RMSNorm(nn.Module):
    """x / max(rms(x), eps) * g, with rms(x) = ||x|| * dim**-0.5 (the original's exact form, eps inside a clamp)."""

    def __init__(self, dim, eps=1e-8):
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        y = x / norm.clamp(min=self.eps)
        return y.mul_(self.g) if _inplace_ok(y, self.g) else y * self.g


class Residual(nn.Module):
    """Plain residual connection (holds no parameters in the released configs)."""

    def forward(self, x, residual):
        return x + residual


# feed-forward

class GLU(nn.Module):
    """Gated linear unit: one projection to twice the width, value times activation(gate)."""

    def __init__(self, dim_in, dim_out, activation):
        super().__init__()
        self.act = activation
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        gate = self.act(gate)
        return gate.mul_(x) if _inplace_ok(gate, x) else x * gate


class FeedForward(nn.Module):
    """Linear -> GELU (or GLU-GELU) -> dropout -> linear; ``net`` indices match the original (0, 1, 2, 3)."""

    def __init__(self, dim, dim_out=None, mult=4, glu=False, dropout=0.0):
        super().__init__()
        inner_dim = int(dim * mult)
        project_in = GLU(dim, inner_dim, nn.GELU()) if glu else nn.Sequential(nn.Linear(dim, inner_dim), nn.GELU())
        self.net = nn.Sequential(project_in, nn.Identity(), nn.Dropout(dropout), nn.Linear(inner_dim, dim_out or dim))

    def forward(self, x):
        return self.net(x)


# attention

class Attention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections (no bias) and an output projection.

    ``rotary`` is (cos, sin), each (N, r): the first r channels of q, k and v of every head are rotated.
    ``mask`` (B, N) bool, True = keep: pairs where the query or the key is masked get -finfo.max before the softmax,
    exactly as the original (so a fully masked query row attends uniformly).
    """

    inplace_rotary = True  # rotate q, k, v in place when nothing records them (an export form turns it off)

    def __init__(self, dim, dim_head=DEFAULT_DIM_HEAD, heads=8, causal=False, dropout=0.0):
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.causal = causal
        inner = dim_head * heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x, mask=None, rotary=None):
        b, n, _ = x.shape
        q, k, v = (proj(x).view(b, n, self.heads, self.dim_head) for proj in (self.to_q, self.to_k, self.to_v))
        if rotary is not None:
            rotate = _rotate_prefix_ if _no_grad(q) and self.inplace_rotary else _rotate_prefix
            q, k, v = (rotate(t, *rotary) for t in (q, k, v))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, d)
        bias = _attention_bias(mask, n, self.causal, q.dtype, q.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout.p if self.training else 0.0)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


def _no_grad(t):
    """True when ``t`` may be modified in place (nothing records it for a backward pass)."""
    return not (torch.is_grad_enabled() and t.requires_grad)


def _inplace_ok(a, b):
    """True when ``a op= b`` gives exactly ``a op b``: no autograd, and neither the dtype (autocast mixes fp16/bf16
    outputs with an fp32 residual stream) nor the shape of the result differs from ``a``'s."""
    return (_no_grad(a) and not (torch.is_grad_enabled() and b.requires_grad)
            and torch.result_type(a, b) == a.dtype and b.dim() <= a.dim()
            and torch.broadcast_shapes(a.shape, b.shape) == a.shape)


def _attention_bias(mask, n, causal, dtype, device):
    """Additive (B|1, 1, N, N) bias: 0 where attended, -finfo.max where masked (None when nothing is masked)."""
    keep = None
    if mask is not None:
        keep = mask[:, None, :, None] & mask[:, None, None, :]  # (B, 1, N, N): query and key both kept
    if causal:
        tri = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]
        keep = tri if keep is None else keep & tri
    if keep is None:
        return None
    neg = torch.tensor(-torch.finfo(dtype).max, dtype=dtype, device=device)
    return torch.where(keep, torch.zeros((), dtype=dtype, device=device), neg)


# the layer stack

class AttentionLayers(nn.Module):
    """Pre-norm stack of ``depth`` (attention, feed-forward) pairs; ``layers[i]`` = [norms, block, residual].

    Takes the original's keyword arguments; ``attn_*`` and ``ff_*`` prefixed ones go to the blocks.
    """

    def __init__(self, dim, depth, heads=8, causal=False, use_rmsnorm=False, rotary_pos_emb=False,
                 rotary_emb_dim=None, **kwargs):
        super().__init__()
        ff_kwargs, kwargs = _split_prefixed("ff_", kwargs)
        attn_kwargs, kwargs = _split_prefixed("attn_", kwargs)
        for key, default in _UNSUPPORTED_LAYER_OPTIONS.items():
            if key in kwargs and kwargs.pop(key) != default:
                raise ValueError(f"AttentionLayers: {key} is not implemented by this port (only the released "
                                 f"CLVP/CVVP configuration is); use the original tortoise-tts x-transformers")
        _reject_unsupported(kwargs, (), "AttentionLayers")
        _reject_unsupported(attn_kwargs, _ATTN_OPTIONS, "AttentionLayers attn_*")
        _reject_unsupported(ff_kwargs, _FF_OPTIONS, "AttentionLayers ff_*")

        self.dim = dim
        self.depth = depth
        self.layers = nn.ModuleList()  # registered before rotary_pos_emb: the checkpoints' key order
        self.causal = causal
        dim_head = attn_kwargs.get("dim_head", DEFAULT_DIM_HEAD)
        self.has_pos_emb = rotary_pos_emb
        rotary_emb_dim = max(rotary_emb_dim or dim_head // 2, 32)
        if rotary_pos_emb and rotary_emb_dim > dim_head:
            raise ValueError(f"rotary_emb_dim {rotary_emb_dim} exceeds the head width {dim_head}")
        self.rotary_pos_emb = RotaryEmbedding(rotary_emb_dim) if rotary_pos_emb else None
        self.layer_types = ("a", "f") * depth

        norm_class = RMSNorm if use_rmsnorm else nn.LayerNorm
        for layer_type in self.layer_types:
            if layer_type == "a":
                block = Attention(dim, heads=heads, causal=causal, **attn_kwargs)
            else:
                block = FeedForward(dim, **ff_kwargs)
            norms = nn.ModuleList([norm_class(dim), None, None])  # pre-branch norm; no post-branch / post-main
            self.layers.append(nn.ModuleList([norms, block, Residual()]))

    def forward(self, x, mask=None, return_hiddens=False):
        """x: (B, N, dim); mask: (B, N) bool or None. Returns (B, N, dim) (and the per-ff hiddens if asked)."""
        rotary = None
        if self.rotary_pos_emb is not None:
            rotary = self.rotary_pos_emb.cos_sin(x.shape[1], x.device, x.dtype)
        hiddens = []
        for layer_type, (norms, block, residual) in zip(self.layer_types, self.layers):
            h = norms[0](x)
            h = block(h, mask=mask, rotary=rotary) if layer_type == "a" else block(h)
            x = h.add_(x) if _inplace_ok(h, x) else residual(h, x)  # h is fresh: reuse its memory
            if layer_type == "f":
                hiddens.append(x)
        return (x, hiddens) if return_hiddens else x


class Encoder(AttentionLayers):
    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise ValueError("Encoder is never causal; use Decoder for causal attention")
        super().__init__(causal=False, **kwargs)


class Decoder(AttentionLayers):
    def __init__(self, **kwargs):
        if "causal" in kwargs:
            raise ValueError("Decoder is always causal; do not pass causal=")
        super().__init__(causal=True, **kwargs)


class ContinuousTransformerWrapper(nn.Module):
    """Continuous-input wrapper: optional input projection, optional absolute positions, the layers, a final LayerNorm
    and an optional output projection (the released CLVP/CVVP use neither projection nor positions)."""

    def __init__(self, *, max_seq_len, attn_layers, dim_in=None, dim_out=None, emb_dim=None, emb_dropout=0.0,
                 use_pos_emb=True):
        super().__init__()
        if not isinstance(attn_layers, AttentionLayers):
            raise ValueError("attn_layers must be an Encoder or a Decoder")
        dim = attn_layers.dim
        self.max_seq_len = max_seq_len
        self.pos_emb = AbsolutePositionalEmbedding(dim, max_seq_len) \
            if use_pos_emb and not attn_layers.has_pos_emb else None
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.project_in = nn.Linear(dim_in, dim) if dim_in is not None else nn.Identity()
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)
        self.project_out = nn.Linear(dim, dim_out) if dim_out is not None else nn.Identity()

    def forward(self, x, return_embeddings=False, mask=None):
        """x: (B, N, dim_in or dim) -> (B, N, dim_out or dim)."""
        x = self.project_in(x)
        if self.pos_emb is not None:
            x = x + self.pos_emb(x)
        x = self.emb_dropout(x)
        x = self.norm(self.attn_layers(x, mask=mask))
        return x if return_embeddings else self.project_out(x)


class CheckpointedLayer(nn.Module):
    """Holds a block under ``wrap`` (the checkpoints' key prefix); at inference it simply calls it."""

    def __init__(self, wrap):
        super().__init__()
        self.wrap = wrap

    def forward(self, x, *args, **kwargs):
        return self.wrap(x, *args, **kwargs)


def checkpoint_wrap_layers(wrapper):
    """Wrap every block of ``wrapper.attn_layers`` in a CheckpointedLayer, as the original's encoder wrapper does."""
    layers = wrapper.attn_layers.layers
    for i in range(len(layers)):
        norms, block, residual = layers[i]
        layers[i] = nn.ModuleList([norms, CheckpointedLayer(block), residual])


class CheckpointedXTransformerEncoder(nn.Module):
    """An x-transformers ``ContinuousTransformerWrapper`` whose blocks sit under ``CheckpointedLayer`` (the released
    CLVP's key layout, ``transformer.attn_layers.layers.<i>.1.wrap...``), optionally permuting channels-mid input
    ``[B, C, N]`` to the channels-last layout the transformer expects and back. Inference never checkpoints."""

    def __init__(self, needs_permute=True, exit_permute=True, checkpoint=True, **xtransformer_kwargs):
        super().__init__()
        self.transformer = ContinuousTransformerWrapper(**xtransformer_kwargs)
        self.needs_permute = needs_permute
        self.exit_permute = exit_permute
        if checkpoint:
            checkpoint_wrap_layers(self.transformer)

    def forward(self, x, **kwargs):
        if self.needs_permute:
            x = x.permute(0, 2, 1)
        h = self.transformer(x, **kwargs)
        return h.permute(0, 2, 1) if self.exit_permute else h


__all__ = ["AbsolutePositionalEmbedding", "Attention", "AttentionLayers", "CheckpointedLayer",
           "ContinuousTransformerWrapper", "Decoder", "Encoder", "FeedForward", "GLU", "RMSNorm",
           "CheckpointedXTransformerEncoder", "RelativePositionBias", "Residual", "RotaryEmbedding",
           "apply_rotary_pos_emb", "checkpoint_wrap_layers",
           "rotate_half"]
