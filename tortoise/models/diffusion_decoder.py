"""DiffusionTts: Tortoise's diffusion decoder, AR latents (or codes) + a voice latent -> a 100-band mel at 24 kHz.

The network predicts, for a noisy mel ``x_t`` and timestep ``t``, the noise (first ``in_channels`` outputs) and the
learned-range variance interpolation (last ``in_channels`` outputs); `tortoise.utils.diffusion` turns that into samples.

Layout (parameter names are the released checkpoint's)::

    get_conditioning:      mel clips (B, K, 100, L) -> contextual_embedder -> mean -> voice latent (B, 2C)
    timestep_independent:  latents (B, S, 1024) -> latent_conditioner -> code_norm, scale/shift by the voice latent
                           -> nearest upsampling to the mel length T                    -> code_emb (B, C, T)
    forward (every step):  code_emb -> conditioning_timestep_integrator (3 DiffusionLayers)
                           x_t -> inp_block, concatenated with it -> integrating_conv
                           -> layers (num_layers DiffusionLayers + 3 ResBlocks) -> out     -> (B, 200, T)

The per-step trunk is written for inference speed: elementwise work is done in place on activations the trunk owns,
and the relative-position bias is cached across layers and steps (rebuilt only when T changes): on CPU as one row
of 2T - 1 offsets per head, which SDPA reads as a strided (H, T, T) view (`RelativeBiasCache`), elsewhere as one
(1, H, T, T) buffer that each block's bias table is gathered into.
The in-place trunk does not support autograd; this package only runs inference.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.arch_util import AttentionBlock, RelativePositionBias, normalization


def is_latent(t):
    """Aligned conditioning given as AR latents (float) rather than codes (long)."""
    return t.is_floating_point()


def is_sequence(t):
    return t.dtype == torch.long


def timestep_embedding(timesteps, dim, max_period=10000):
    """Sinusoidal embedding (N,) -> (N, dim) in fp32: [cos(t f_i), sin(t f_i)], f_i = max_period^(-i / (dim // 2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _own_dtype(device):
    """Autocast off: the network computes in its parameters' dtype (cast the model for half precision), so an autocast
    region around it can neither mix dtypes in its in-place kernels nor silently change its numerics."""
    return torch.autocast(device_type=torch.device(device).type, enabled=False)


def _group_norm(norm, x):
    """GroupNorm in fp32 whatever the dtype of ``x``, cast back (as GroupNorm32)."""
    if x.dtype == torch.float32:
        return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    return F.group_norm(x.float(), norm.num_groups, norm.weight.float(), norm.bias.float(), norm.eps).to(x.dtype)


class TimestepBlock(nn.Module):
    """A module whose forward takes the timestep embedding as a second argument."""

    def forward(self, x, emb):
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential, TimestepBlock):
    """Sequential that hands the timestep embedding to the TimestepBlocks it holds."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """Residual block conditioned on the timestep embedding: GN-SiLU-conv, GN with (1 + scale, shift), SiLU-conv.

    ``efficient_config`` makes the first convolution (and the skip projection) 1-wide, as in every released model.
    ``dims`` is accepted for signature compatibility (always 1-D).
    """

    def __init__(self, channels, emb_channels, dropout, out_channels=None, dims=2, kernel_size=3,
                 efficient_config=True, use_scale_shift_norm=False):
        super().__init__()
        if kernel_size not in (1, 3, 5):
            raise ValueError(f"ResBlock kernel_size must be 1, 3 or 5, got {kernel_size}")
        self.channels = channels
        self.emb_channels = emb_channels
        self.dropout = dropout
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        padding = kernel_size // 2
        eff_kernel, eff_padding = (1, 0) if efficient_config else (3, 1)
        self.in_layers = nn.Sequential(
            normalization(channels), nn.SiLU(),
            nn.Conv1d(channels, self.out_channels, eff_kernel, padding=eff_padding))
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, 2 * self.out_channels if use_scale_shift_norm else self.out_channels))
        self.out_layers = nn.Sequential(
            normalization(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv1d(self.out_channels, self.out_channels, kernel_size, padding=padding))
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv1d(channels, self.out_channels, eff_kernel, padding=eff_padding)

    def forward(self, x, emb):
        # x: (B, C, T); emb: (B, E)
        h = self.in_layers[2](F.silu(_group_norm(self.in_layers[0], x), inplace=True))  # (B, C', T)
        e = self.emb_layers(emb).to(h.dtype)[..., None]  # (B, C' or 2C', 1)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = _group_norm(self.out_layers[0], h).mul_(1 + scale).add_(shift)
        else:
            h = _group_norm(self.out_layers[0], h.add_(e))
        h = self.out_layers[3](self.out_layers[2](F.silu(h, inplace=True)))
        return h.add_(self.skip_connection(x))


class RelativeBiasCache:
    """The relative-position attention bias of a length-T sequence, for each attention block in turn.

    The bias of query i and key j is ``table[:, bucket(j - i)]``: it depends only on the offset ``j - i``. On CPU the
    cache holds one row per head over the 2T - 1 offsets and hands SDPA a strided (Hankel) view of it, so no (H, T, T)
    tensor is written or read per block; with the queries taken in reverse order (row r is query T - 1 - r) the row
    offset j - (T - 1 - r) = r + j - (T - 1) grows with both indices, giving the non-negative strides (1, 1).
    SDPA handles every query row on its own, so reversing the queries leaves each output row bit-identical.
    Other backends get the dense bias, one gather of each block's (H, 32) table into a single (H, T*T) buffer
    reused by every block (blocks run one after another). ``strided`` picks the form (default: CPU only).
    It also keeps the attention's (B, T, 3C) projection buffer across blocks and steps (`workspace`): allocated per
    block, its 13 MB (B = 1, T = 1088) came back from the OS each time as tens of thousands of minor page faults.
    """

    def __init__(self, length, heads, device, dtype, num_buckets=32, max_distance=64, strided=None):
        device = torch.device(device)
        self.strided = device.type == "cpu" if strided is None else strided
        self.key = (length, heads, device, dtype, num_buckets, max_distance, self.strided)
        pos = torch.arange(length, device=device)
        if self.strided:
            rel = torch.arange(2 * length - 1, device=device) - (length - 1)  # (2T-1,) offsets j - i
        else:
            rel = (pos[None, :] - pos[:, None]).reshape(-1)  # (T*T,) offsets j - i, row-major over (i, j)
        buckets = RelativePositionBias._relative_position_bucket(
            rel, causal=False, num_buckets=num_buckets, max_distance=max_distance)
        # int32 indices gather faster on CPU (half the index traffic); other backends get the int64 they all take
        self.buckets = buckets.to(torch.int32 if device.type == "cpu" else torch.long)
        self.buffer = torch.empty(heads, buckets.numel(), device=device, dtype=dtype)  # (H, 2T-1) or (H, T*T)
        self.length = length
        self._workspace = None

    def workspace(self, shape):
        """A scratch tensor of ``shape`` kept across blocks and steps (valid until the next call)."""
        if self._workspace is None or self._workspace.shape != shape:
            self._workspace = None
            self._workspace = self.buffer.new_empty(shape)
        return self._workspace

    def bias(self, rel):
        """(1, H, T, T) additive logits bias of RelativePositionBias ``rel``, valid until the next call; when
        ``self.strided`` its rows are the queries in reverse order (see the class docstring)."""
        table = (rel.relative_attention_bias.weight * rel.scale).t().to(self.buffer.dtype)  # (H, buckets)
        torch.index_select(table, 1, self.buckets, out=self.buffer)
        t, heads = self.length, self.buffer.shape[0]
        if self.strided:
            return self.buffer.as_strided((1, heads, t, t), (0, 2 * t - 1, 1, 1))
        return self.buffer.view(1, heads, t, t)


def _sdpa_with_bias(q, k, v, rel, rel_cache, device, dtype):
    """Attention (B, T, H, ch) -> (B, H, T, ch) with ``rel``'s bias: from ``rel_cache`` if given, else built."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # each (B, H, T, ch)
    if rel is None:
        return F.scaled_dot_product_attention(q, k, v)
    if rel_cache is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=rel.bias(q.shape[2], k.shape[2], device).to(dtype))
    mask = rel_cache.bias(rel)
    if not rel_cache.strided:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # queries reversed for the strided bias, the output rows put back in order
    return F.scaled_dot_product_attention(q.flip(2), k, v, attn_mask=mask).flip(2)


def attend(block, x, rel_cache=None):
    """``block(x)`` for an AttentionBlock, computed in place on ``x`` (B, C, T), bias from ``rel_cache`` if given."""
    b, c, t = x.shape
    heads = block.num_heads
    ch = c // heads
    n = _group_norm(block.norm, x)  # (B, C, T)
    w_qkv = block.qkv.weight.squeeze(-1)  # (3C, C)
    qkv = (rel_cache.workspace((b, t, 3 * c)) if rel_cache is not None
           else torch.empty(b, t, 3 * c, device=x.device, dtype=x.dtype))  # (B, T, 3C): channels-last for SDPA
    for i in range(b):
        torch.addmm(block.qkv.bias, n[i].t(), w_qkv.t(), out=qkv[i])
    del n
    # legacy layout: heads are split before q/k/v, i.e. channel = head * 3ch + {0: q, 1: k, 2: v} * ch + j
    q, k, v = qkv.view(b, t, heads, 3, ch).unbind(3)  # each (B, T, H, ch)
    a = _sdpa_with_bias(q, k, v, block.relative_pos_embeddings, rel_cache, x.device, x.dtype)  # (B, H, T, ch)
    a = a.transpose(1, 2).reshape(b, t, c)  # (B, T, C)
    w_out = block.proj_out.weight.squeeze(-1)  # (C, C)
    for i in range(b):
        x[i].addmm_(w_out, a[i].t())
    return x.add_(block.proj_out.bias[:, None])


def _apply(seq, x):
    """A Sequential of convolutions and AttentionBlocks; attention runs in place, so ``x`` must not be the caller's
    (every such Sequential here starts with a convolution, or gets a fresh tensor)."""
    for module in seq:
        x = attend(module, x) if isinstance(module, AttentionBlock) else module(x)
    return x


class DiffusionLayer(TimestepBlock):
    """ResBlock (scale-shift conditioned on the timestep) followed by relative-position self-attention."""

    def __init__(self, model_channels, dropout, num_heads):
        super().__init__()
        self.resblk = ResBlock(model_channels, model_channels, dropout, model_channels, dims=1,
                               use_scale_shift_norm=True)
        self.attn = AttentionBlock(model_channels, num_heads, relative_pos_embeddings=True)

    def forward(self, x, time_emb, rel_cache=None):
        return attend(self.attn, self.resblk(x, time_emb), rel_cache)


class DiffusionTts(nn.Module):
    """Tortoise's mel diffusion decoder (released config: `tortoise.utils.checkpoints.RELEASED_CONFIGS['diffusion']`).

    ``dropout``, ``layer_drop`` and ``unconditioned_percentage`` only matter in training and are kept for signature
    compatibility; ``use_fp16`` is recorded only. Half precision: cast the model (``model.to(torch.float16)`` or
    ``torch.bfloat16``); it then computes in that dtype with GroupNorm in fp32 and returns fp32. Autocast regions are
    switched off inside (the in-place kernels need one dtype), so an fp32 model under autocast runs in fp32.
    """

    def __init__(self, model_channels=512, num_layers=8, in_channels=100, in_latent_channels=512, in_tokens=8193,
                 out_channels=200, dropout=0, use_fp16=False, num_heads=16, layer_drop=.1,
                 unconditioned_percentage=.1):
        super().__init__()
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.dropout = dropout
        self.num_heads = num_heads
        self.unconditioned_percentage = unconditioned_percentage
        self.enable_fp16 = use_fp16
        self.layer_drop = layer_drop
        mc = model_channels

        def attn(channels):
            return AttentionBlock(channels, num_heads, relative_pos_embeddings=True, do_checkpoint=False)

        self.inp_block = nn.Conv1d(in_channels, mc, 3, 1, 1)
        self.time_embed = nn.Sequential(nn.Linear(mc, mc), nn.SiLU(), nn.Linear(mc, mc))
        self.code_embedding = nn.Embedding(in_tokens, mc)
        self.code_converter = nn.Sequential(attn(mc), attn(mc), attn(mc))
        self.code_norm = normalization(mc)
        self.latent_conditioner = nn.Sequential(nn.Conv1d(in_latent_channels, mc, 3, padding=1),
                                                attn(mc), attn(mc), attn(mc), attn(mc))
        self.contextual_embedder = nn.Sequential(nn.Conv1d(in_channels, mc, 3, padding=1, stride=2),
                                                 nn.Conv1d(mc, mc * 2, 3, padding=1, stride=2),
                                                 *[attn(mc * 2) for _ in range(5)])
        self.unconditioned_embedding = nn.Parameter(torch.randn(1, mc, 1))
        self.conditioning_timestep_integrator = TimestepEmbedSequential(
            *[DiffusionLayer(mc, dropout, num_heads) for _ in range(3)])
        self.integrating_conv = nn.Conv1d(mc * 2, mc, kernel_size=1)
        self.mel_head = nn.Conv1d(mc, in_channels, kernel_size=3, padding=1)
        self.layers = nn.ModuleList(
            [DiffusionLayer(mc, dropout, num_heads) for _ in range(num_layers)]
            + [ResBlock(mc, mc, dropout, dims=1, use_scale_shift_norm=True) for _ in range(3)])
        self.out = nn.Sequential(normalization(mc), nn.SiLU(), nn.Conv1d(mc, out_channels, 3, padding=1))
        self._rel_cache = None

    # ---- timestep-independent work (once per utterance) ----

    def get_conditioning(self, conditioning_input):
        """Voice latent (B, 2C) from mel clips (B, K, in_channels, L) or one clip per item (B, in_channels, L)."""
        clips = conditioning_input.unsqueeze(1) if conditioning_input.dim() == 3 else conditioning_input
        clips = clips.to(self.inp_block.weight.dtype)
        self._check_inference()
        b, k = clips.shape[:2]
        with _own_dtype(clips.device):
            h = _apply(self.contextual_embedder, clips.flatten(0, 1))  # (B*K, 2C, L/4)
        # mean over every frame of every clip (the clips share a length, so this is the mean of their concatenation)
        return h.unflatten(0, (b, k)).mean(dim=(1, 3))

    def timestep_independent(self, aligned_conditioning, conditioning_latent, expected_seq_len, return_code_pred):
        """Code embedding (B, C, expected_seq_len) from AR latents (B, S, in_latent) or codes (B, S) and the voice
        latent (B, 2C).

        With ``return_code_pred`` also the auxiliary mel prediction (B, in_channels, expected_seq_len).
        """
        self._check_inference()
        with _own_dtype(aligned_conditioning.device):
            return self._timestep_independent(aligned_conditioning, conditioning_latent, expected_seq_len,
                                              return_code_pred)

    def _timestep_independent(self, aligned_conditioning, conditioning_latent, expected_seq_len, return_code_pred):
        dtype = self.inp_block.weight.dtype
        cond_scale, cond_shift = torch.chunk(conditioning_latent.to(dtype), 2, dim=1)  # each (B, C)
        if is_latent(aligned_conditioning):
            code_emb = _apply(self.latent_conditioner, aligned_conditioning.to(dtype).permute(0, 2, 1))  # (B, C, S)
        else:
            code_emb = _apply(self.code_converter,
                              self.code_embedding(aligned_conditioning).permute(0, 2, 1).contiguous())
        code_emb = _group_norm(self.code_norm, code_emb) * (1 + cond_scale.unsqueeze(-1)) + cond_shift.unsqueeze(-1)
        if self.training and self.unconditioned_percentage > 0:
            drop = torch.rand(code_emb.shape[0], 1, 1, device=code_emb.device) < self.unconditioned_percentage
            code_emb = torch.where(drop, self.unconditioned_embedding, code_emb)
        else:
            drop = None
        expanded = F.interpolate(code_emb, size=expected_seq_len, mode="nearest")  # (B, C, T)
        if not return_code_pred:
            return expanded
        mel_pred = self.mel_head(expanded)
        if drop is not None:
            mel_pred = mel_pred * drop.logical_not()
        return expanded, mel_pred

    # ---- the per-step network ----

    def forward(self, x, timesteps, aligned_conditioning=None, conditioning_latent=None,
                precomputed_aligned_embeddings=None, conditioning_free=False, return_code_pred=False):
        """Noise and variance prediction (B, out_channels, T) for noisy mels ``x`` (B, in_channels, T) at
        ``timesteps`` (B,).

        Conditioning: ``precomputed_aligned_embeddings`` from `timestep_independent`, or ``aligned_conditioning`` with
        ``conditioning_latent``; with ``conditioning_free`` the learned unconditioned embedding replaces them.
        """
        if return_code_pred and precomputed_aligned_embeddings is not None:
            raise ValueError("return_code_pred needs aligned_conditioning, not precomputed_aligned_embeddings")
        mel_pred = None
        if conditioning_free:
            code_emb = self.unconditioned_embedding.expand(x.shape[0], -1, x.shape[-1])
            if return_code_pred:
                mel_pred = self.timestep_independent(aligned_conditioning, conditioning_latent, x.shape[-1], True)[1]
        elif precomputed_aligned_embeddings is not None:
            code_emb = precomputed_aligned_embeddings
        else:
            self._check_conditioning(aligned_conditioning, conditioning_latent)
            code_emb, mel_pred = self.timestep_independent(aligned_conditioning, conditioning_latent,
                                                           x.shape[-1], True)
        out = self._trunk(x, timesteps, code_emb)
        return (out, mel_pred) if return_code_pred else out

    def forward_guided(self, x, timesteps, aligned_conditioning=None, conditioning_latent=None,
                       precomputed_aligned_embeddings=None):
        """Conditional and unconditional outputs, each (B, out_channels, T), from ONE batched forward of 2B items.

        Equal to ``forward(...)`` and ``forward(..., conditioning_free=True)``.
        """
        if precomputed_aligned_embeddings is None:
            self._check_conditioning(aligned_conditioning, conditioning_latent)
            precomputed_aligned_embeddings = self.timestep_independent(aligned_conditioning, conditioning_latent,
                                                                       x.shape[-1], False)
        cond = precomputed_aligned_embeddings.to(self.unconditioned_embedding.dtype).expand(x.shape[0], -1, -1)
        uncond = self.unconditioned_embedding.expand(x.shape[0], -1, x.shape[-1])
        out = self._trunk(torch.cat([x, x]), torch.cat([timesteps, timesteps]), torch.cat([cond, uncond]))
        return out.chunk(2)

    @staticmethod
    def _check_conditioning(aligned_conditioning, conditioning_latent):
        if aligned_conditioning is None or conditioning_latent is None:
            raise ValueError("DiffusionTts needs precomputed_aligned_embeddings, or aligned_conditioning together "
                             "with conditioning_latent, or conditioning_free=True")

    def _check_inference(self):
        if torch.is_grad_enabled() and self.inp_block.weight.requires_grad:
            raise RuntimeError("DiffusionTts runs inference only: call it under torch.no_grad() or "
                               "torch.inference_mode(), or freeze it with model.requires_grad_(False)")

    def _relative_bias_cache(self, length, device, dtype):
        key = (length, self.num_heads, torch.device(device), dtype, 32, 64, torch.device(device).type == "cpu")
        if self._rel_cache is None or self._rel_cache.key != key:
            self._rel_cache = None  # free the old buffer before allocating the new one
            self._rel_cache = RelativeBiasCache(length, self.num_heads, device, dtype)
        return self._rel_cache

    def _trunk(self, x, timesteps, code_emb):
        with _own_dtype(x.device):
            return self._trunk_steps(x, timesteps, code_emb)

    def _trunk_steps(self, x, timesteps, code_emb):
        # x: (B, in_channels, T); timesteps: (B,); code_emb: (B or 1, C, T)
        self._check_inference()
        dtype = self.inp_block.weight.dtype
        x = x.to(dtype)
        rel = self._relative_bias_cache(x.shape[-1], x.device, dtype)
        time_emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))  # (B, C)
        code = code_emb.to(dtype).expand(x.shape[0], -1, -1)  # a batch-1 embedding serves every item
        for layer in self.conditioning_timestep_integrator:
            code = layer(code, time_emb, rel)  # (B, C, T)
        h = self.integrating_conv(torch.cat([self.inp_block(x), code], dim=1))  # (B, C, T)
        del code
        for layer in self.layers:
            h = layer(h, time_emb, rel) if isinstance(layer, DiffusionLayer) else layer(h, time_emb)
        h = F.silu(_group_norm(self.out[0], h), inplace=True)
        return self.out[2](h).float()  # (B, out_channels, T)
