"""A plain PyTorch GPT-2 stack laid out exactly like the checkpoint's Hugging Face `GPT2Model` (no embeddings).

Parameter names and layouts are those of HF GPT-2 as Tortoise uses it: `h.N.ln_1`, `h.N.attn.c_attn` (a `Conv1D`
whose weight is stored [in, out]), `h.N.attn.c_proj`, `h.N.ln_2`, `h.N.mlp.c_fc`, `h.N.mlp.c_proj`, `ln_f`.
Tortoise deletes GPT-2's token and position embeddings (`wte`, `wpe`), so this module has none: it maps input
embeddings (B, S, d) to hidden states (B, S, d).

Three ways to run it:
- `forward(x)`: the whole sequence, causal (training / teacher forcing / recompute decoding);
- `prefill(x, cache)`: the same, also writing every layer's keys and values into a preallocated `KVCache`;
- `step(x, cache, pos)`: one new position per row, its keys/values written in place at `pos`, attending to the
  cache up to `pos`. With `fixed_shape=True` the step attends to the whole cache under a mask, so every step has the
  same shapes (what `torch.compile` wants); otherwise it attends to the slice `[:pos + 1]`.
"""
import math
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GPT2Config:
    n_embd: int
    n_layer: int
    n_head: int
    n_positions: int  # kept for the record: HF used it for its causal-mask buffer; we need no buffer
    layer_norm_epsilon: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# Row counts for which the oneDNN-prepacked weight beats MKL's addmm on the plain layout (CPU), by dtype. float32:
# from 2 rows (at one row, memory bound, addmm read at the bandwidth floor on an AVX2 EPYC and an AMX Xeon).
# bfloat16: from one row: addmm's bf16 kernel reads the [in, out] layout at 9.4 GB/s on an AVX512-BF16 EPYC (Zen 5)
# and 1.8 GB/s on an AMX Xeon, the packed one at 25.8 and 6.8 GB/s (one to four rows, 2 threads), so the
# batch-1 decode step of --half takes the packed weights too.
PACKED_ROWS = {torch.float32: (2, 256), torch.bfloat16: (1, 256)}


def packed_rows(dtype) -> tuple:
    """``(fewest, most)`` rows for which a prepacked weight of ``dtype`` is used (see :data:`PACKED_ROWS`)."""
    return PACKED_ROWS.get(dtype, (2, 256))


def cache_dtype(dtype, device) -> torch.dtype:
    """The KV cache's dtype for weights of ``dtype`` on ``device``: float32 on a CPU whatever the weights (a decode
    step's attention, one query against the cache, runs 2.7x slower in bf16 than in fp32 on an AVX512-BF16 CPU:
    6.2 vs 2.3 ms per layer at batch 16 and 300 positions), else the weights' dtype."""
    return torch.float32 if torch.device(device).type == "cpu" and dtype in (torch.bfloat16, torch.float16) else dtype


# Weight-only int8 (per output channel, bf16 activations: torch's _weight_int8pack_mm, gpt-fast's CPU kernel) serves
# up to this many rows: decode steps at batch 1-4. Its kernel slows with rows (a full-size step at batch 16 took
# 0.179 s against fp32's prepacked 0.120 s on an AVX512-BF16 EPYC; batch 4: 0.046 s against 0.085 s), so larger
# steps and the prompt and latent passes keep float32.
INT8_WEIGHT_ROWS = 4
INT8_MODES = ("weight", "dynamic")


def int8_mode() -> str:
    """``--int8`` on this CPU: ``"weight"`` (weight-only int8 with bf16 activations) where the CPU has native bf16,
    else ``"dynamic"`` (int8 activations too, fbgemm / oneDNN: fast everywhere, but about 3x the drift from fp32).
    On an AVX512-BF16 EPYC the full-size batch-1 step took 0.030 s weight-only (latent rel-L2 0.028 from fp32) and
    0.026 s dynamic (0.075); the int8 kernel with fp32 activations is 10x slower than with bf16 ones."""
    weight_ok = can_prepack(torch.bfloat16) and hasattr(torch.ops.aten, "_weight_int8pack_mm")
    return "weight" if weight_ok else "dynamic"


def can_prepack(dtype=torch.float32) -> bool:
    """Whether oneDNN can prepack linear weights of ``dtype`` on this CPU (bfloat16 needs native bf16 support)."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


# Half weights on a CPU: the step's row counts for which a float32 copy of the weights is timed against the half
# kernels when decoding starts (:func:`plan_half_rows`). An Intel Xeon with AMX ran a batch-1 bf16 linear slower
# than fp32 even prepacked (24 different 4096x1024 weights: 29.5 ms packed bf16, 16.0 ms fp32, 2 threads), so
# there a batch-1 step of --half would lose to fp32; an AVX512-BF16 EPYC runs packed bf16 faster at every row
# count. Past 4 rows the half kernels win by far everywhere measured (batch 16: 12.0 ms against 53.1 ms).
HALF_ROWS_TIMED = (1, 2, 4)
HALF_ROWS_MARGIN = 0.95  # the float32 copy must be at least 5% faster: ties keep the half kernels (and memory)


@dataclass(frozen=True)
class HalfRowPlan:
    """What :func:`plan_half_rows` measured and chose: ``float_rows`` (steps of up to this many rows use the
    float32 copy; 0: none), and per timed row count the seconds of one pass over every linear of the stack with the
    half kernels and with the float32 copy."""
    float_rows: int
    half_s: dict
    float_s: dict

    def describe(self) -> str:
        cells = ", ".join(f"{r} row{'s' * (r > 1)} {self.half_s[r] * 1e3:.1f} vs {self.float_s[r] * 1e3:.1f} ms"
                          for r in sorted(self.half_s))
        chosen = f"float32 copy up to {self.float_rows} rows" if self.float_rows else "half kernels at every row"
        return f"{chosen} (half vs float32 over the stack's linears: {cells})"


def _time_linears(layers, rows, use_float, repeats=3) -> float:
    """Best of ``repeats`` passes over every layer at ``rows`` rows: each pass streams all the weights once, as a
    decode step does (one layer's weight alone would sit in cache and flatter the slower kernel)."""
    saved = [(layer.float_rows, layer._float) for layer in layers]
    xs = [torch.randn(rows, layer.weight.shape[0], dtype=layer.weight.dtype) for layer in layers]
    best = math.inf
    try:
        for layer in layers:
            layer.float_rows = rows if use_float else 0
        with torch.no_grad():
            for i in range(repeats + 1):  # the first pass warms up (oneDNN primitives, page faults)
                start = time.perf_counter()
                for layer, x in zip(layers, xs):
                    layer(x)
                if i:
                    best = min(best, time.perf_counter() - start)
    finally:
        for layer, (rows_, copy) in zip(layers, saved):
            layer.float_rows, layer._float = rows_, copy
    return best


def plan_half_rows(layers, timer=_time_linears) -> HalfRowPlan:
    """Decide once, by measuring on this CPU, whether half-precision weights compute small steps (the batch-1..4
    decode) faster from a float32 copy than with the half kernels, so that --half is never slower than fp32 at a
    step's shape. Keeps the copy on ``layers`` (Conv1D, prepacked already) only for the winning row counts; the
    chosen rows are a prefix (1..n), since the half kernels gain on fp32 as rows grow."""
    layers = list(layers)
    if not layers or layers[0].weight.device.type != "cpu" or layers[0].weight.dtype == torch.float32:
        return HalfRowPlan(0, {}, {})
    for layer in layers:
        layer.keep_float_copy(max(HALF_ROWS_TIMED))
    half_s, float_s, float_rows = {}, {}, 0
    for rows in HALF_ROWS_TIMED:
        half_s[rows] = timer(layers, rows, use_float=False)
        float_s[rows] = timer(layers, rows, use_float=True)
        if float_s[rows] >= HALF_ROWS_MARGIN * half_s[rows]:
            break
        float_rows = rows
    for layer in layers:
        layer.keep_float_copy(float_rows)
    return HalfRowPlan(float_rows, half_s, float_s)


class Conv1D(nn.Module):
    """HF GPT-2's linear layer: y = x @ weight + bias with weight stored [in, out].

    On CPU (float32, or bfloat16 where the CPU has native bf16), `prepack(rows)` adds a oneDNN-blocked copy of the
    weight (what torch.compile's freezing does): small row counts (the decode step at batch 2..256) then run about
    1.3-1.4x faster than MKL's addmm on the plain layout; in float32 one row (batch-1 decode, memory bound) and large
    ones keep addmm, in bfloat16 one row takes the packed weight too (:data:`PACKED_ROWS`). The copy is dropped if
    the weight changes (a new state dict, a move to another device or dtype)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self._packed = None  # (stamp, packed weight) — not part of the state dict
        self._int8 = None  # (stamp, int8 packed params) — opt-in, not part of the state dict
        self._float = None  # (stamp, float32 weight, float32 bias): half weights' small steps, see HalfRowPlan
        self.float_rows = 0  # rows up to which half weights compute from the float32 copy (0: never)

    def _stamp(self):
        w = self.weight
        return w.data_ptr(), w._version, w.device, w.dtype

    def prepack(self, rows: int = 16):
        self._packed = (self._stamp(), torch.ops.mkldnn._reorder_linear_weight(
            self.weight.detach().t().contiguous(), rows))

    def unpack(self):
        self._packed = None

    def keep_float_copy(self, rows: int):
        """Half weights on a CPU: compute steps of up to ``rows`` rows from a float32 copy of the (half-rounded)
        weight, where that measured faster than the half kernels (:func:`plan_half_rows`); 0 drops the copy."""
        self.float_rows = rows
        self._float = (self._stamp(), self.weight.detach().float(), self.bias.detach().float()) if rows else None

    def quantize_int8(self, mode="dynamic"):
        """CPU: an int8 copy of the weight (per-output-channel scales, about 4x less weight traffic). ``mode``
        ``"weight"``: weight-only, the activations in bf16 (rows up to :data:`INT8_WEIGHT_ROWS`; more rows keep
        float32); ``"dynamic"``: activations quantized per call too, the matmul in int8 (fbgemm / oneDNN)."""
        w = self.weight.detach().t().contiguous().float()  # (out, in)
        scales = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)
        if mode == "weight":
            q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
            self._int8 = (self._stamp(), ("weight", q, scales.bfloat16(), self.bias.detach().bfloat16()))
            return
        with warnings.catch_warnings():  # quantized tensors are deprecated upstream; still the fast CPU int8 path
            warnings.simplefilter("ignore")
            scales = scales.double()
            qweight = torch.quantize_per_channel(w, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8)
            self._int8 = (self._stamp(), ("dynamic", torch.ops.quantized.linear_prepack(qweight,
                                                                                       self.bias.detach().float())))

    def dequantize(self):
        self._int8 = None

    def _use_int8(self, x2d) -> bool:
        if self._int8 is None or x2d.device.type != "cpu" or x2d.dtype != torch.float32:
            return False
        if self._int8[0] != self._stamp():
            self._int8 = None
            return False
        if self._int8[1][0] == "weight" and x2d.shape[0] > INT8_WEIGHT_ROWS:
            return False
        return not (torch.is_grad_enabled() and self.weight.requires_grad)

    def _use_float(self, x2d) -> bool:
        if self._float is None or x2d.shape[0] > self.float_rows or x2d.device.type != "cpu":
            return False
        if self._float[0] != self._stamp() or (torch.is_grad_enabled() and self.weight.requires_grad):
            self._float, self.float_rows = None, 0
            return False
        return True

    def _use_packed(self, x2d) -> bool:
        if self._packed is None or x2d.device.type != "cpu" or x2d.dtype != self.weight.dtype:
            return False
        if torch.is_grad_enabled() and self.weight.requires_grad:
            return False
        if self._packed[0] != self._stamp():
            self._packed = None  # the weight changed since packing
            return False
        low, high = packed_rows(x2d.dtype)
        return low <= x2d.shape[0] <= high

    def forward(self, x):  # (..., in) -> (..., out)
        shape = x.shape[:-1] + (self.weight.shape[1],)
        x2d = x.reshape(-1, x.shape[-1])
        if self._use_int8(x2d):
            kind, *packed = self._int8[1]
            if kind == "weight":
                q, scales, bias = packed
                y = (torch.ops.aten._weight_int8pack_mm(x2d.to(torch.bfloat16), q, scales) + bias).to(x2d.dtype)
            else:
                y = torch.ops.quantized.linear_dynamic(x2d, packed[0], True)  # reduce_range for x86 int8 kernels
        elif self._use_float(x2d):
            y = torch.addmm(self._float[2], x2d.float(), self._float[1]).to(x2d.dtype)
        elif self._use_packed(x2d):
            y = torch.ops.mkldnn._linear_pointwise(x2d, self._packed[1], self.bias, "none", [], "")
        else:
            y = torch.addmm(self.bias, x2d, self.weight)
        return y.view(shape)


class KVCache:
    """Keys and values of every layer, preallocated once as separate (B, H, T, D) tensors, written in place.
    (One tensor per layer, not one for all: a compiled step then mutates each input in place instead of
    copying a single giant buffer once per layer.)"""

    def __init__(self, tensors):
        self.tensors = list(tensors)  # [k_0, v_0, k_1, v_1, ...]

    @classmethod
    def allocate(cls, cfg: GPT2Config, batch: int, length: int, device, dtype) -> "KVCache":
        shape = (batch, cfg.n_head, length, cfg.head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype) for _ in range(2 * cfg.n_layer))

    @property
    def length(self) -> int:
        return self.tensors[0].shape[2]

    def layer(self, i: int):  # -> k, v: (B, H, T, D)
        return self.tensors[2 * i], self.tensors[2 * i + 1]

    def broadcast_from(self, other: "KVCache", rows: torch.Tensor, n_positions: int):
        """Fill positions [:n_positions] of every row from row `rows[b]` of `other` (prefill once, share it)."""
        for dst, src in zip(self.tensors, other.tensors):
            dst[:, :, :n_positions] = src[:, :, :n_positions].index_select(0, rows.to(src.device))


class GPT2Attention(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)

    def _heads(self, x):  # (B, S, 3d) -> q, k, v each (B, H, S, D)
        b, s, _ = x.shape
        qkv = x.view(b, s, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, y):  # (B, H, S, D) -> (B, S, d)
        b, h, s, d = y.shape
        return self.c_proj(y.transpose(1, 2).reshape(b, s, h * d))

    def forward(self, x, kv=None, output_attentions=False):
        """Causal self-attention over the whole sequence; optionally stores k, v into kv[0], kv[1] at [:S]."""
        q, k, v = self._heads(self.c_attn(x))
        if kv is not None:
            kv[0][:, :, :k.shape[2]] = k
            kv[1][:, :, :v.shape[2]] = v
        if output_attentions:
            weights = _causal_attention_weights(q, k)
            return self._merge(weights @ v), weights
        return self._merge(F.scaled_dot_product_attention(q, k, v, is_causal=True)), None

    def step(self, x, kv, pos, fixed_shape=False):
        """x: (B, 1, d), kv: cache views (B, H, T, D); pos: int (or 0-d long tensor when fixed_shape)."""
        q, k, v = self._heads(self.c_attn(x))
        k_cache, v_cache = kv
        q = q.to(k_cache.dtype)  # a float32 cache under half weights (CPU: see cache_dtype)
        if fixed_shape:
            k_cache[:, :, pos.view(1)] = k.to(k_cache.dtype)  # index_put_: re-inplaced by inductor
            v_cache[:, :, pos.view(1)] = v.to(v_cache.dtype)
            mask = (torch.arange(k_cache.shape[2], device=x.device) <= pos).view(1, 1, 1, -1)  # (1, 1, 1, T)
            y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask)
        else:
            k_cache[:, :, pos] = k[:, :, 0]
            v_cache[:, :, pos] = v[:, :, 0]
            y = F.scaled_dot_product_attention(q, k_cache[:, :, :pos + 1], v_cache[:, :, :pos + 1])
        return self._merge(y.to(x.dtype))


def _causal_attention_weights(q, k):  # (B, H, S, D) x2 -> (B, H, S, S) softmax weights, as HF returns them
    s = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    causal = torch.ones(s, s, dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~causal, torch.finfo(scores.dtype).min).softmax(-1)


class GPT2MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.c_fc = Conv1D(cfg.n_embd, 4 * cfg.n_embd)
        self.c_proj = Conv1D(4 * cfg.n_embd, cfg.n_embd)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # HF "gelu_new"


class GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x, kv=None, output_attentions=False):
        a, weights = self.attn(self.ln_1(x), kv, output_attentions)
        x = x + a
        return x + self.mlp(self.ln_2(x)), weights

    def step(self, x, kv, pos, fixed_shape=False):
        x = x + self.attn.step(self.ln_1(x), kv, pos, fixed_shape)
        return x + self.mlp(self.ln_2(x))


@dataclass
class GPT2Output:
    last_hidden_state: torch.Tensor  # (B, S, d)
    attentions: tuple = None  # per layer (B, H, S, S) when asked for


class GPT2Model(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.h = nn.ModuleList([GPT2Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.half_plan = None  # HalfRowPlan, once half weights on a CPU start decoding

    def forward(self, inputs_embeds, output_attentions=False, return_dict=True):
        """inputs_embeds: (B, S, d) -> GPT2Output (last_hidden_state after ln_f)."""
        x, attentions = inputs_embeds, []
        for block in self.h:
            x, weights = block(x, output_attentions=output_attentions)
            attentions.append(weights)
        out = GPT2Output(self.ln_f(x), tuple(attentions) if output_attentions else None)
        return out if return_dict else (out.last_hidden_state,)

    def prepack(self, rows: int = 16):
        """CPU fp32 / bf16: oneDNN-prepacked copies of the linear weights not packed yet (see Conv1D). Costs a
        second copy of the stack's weights (1.5 GB at full size in fp32, 0.8 GB in bf16)."""
        for module in self.modules():
            if isinstance(module, Conv1D) and (module._packed is None or module._packed[0] != module._stamp()):
                module.prepack(rows)

    def unpack(self):
        for module in self.modules():
            if isinstance(module, Conv1D):
                module.unpack()
                module.keep_float_copy(0)
        self.half_plan = None

    def plan_half_rows(self, timer=_time_linears) -> "HalfRowPlan":
        """Half weights on a CPU, once: which small steps compute from a float32 copy (see :func:`plan_half_rows`);
        kept until the weights are unpacked (a new dtype or device)."""
        if self.half_plan is None:
            self.half_plan = plan_half_rows((m for m in self.modules() if isinstance(m, Conv1D)), timer)
        return self.half_plan

    def quantize_int8(self, enabled=True):
        """Opt-in CPU int8 for every linear in the stack: ``True`` in this CPU's :func:`int8_mode`, or ``"weight"`` /
        ``"dynamic"``; False goes back to float32."""
        mode = int8_mode() if enabled is True else enabled
        if mode and mode not in INT8_MODES:
            raise ValueError(f"int8 must be True, False or one of {INT8_MODES}, not {enabled!r}")
        for module in self.modules():
            if isinstance(module, Conv1D):
                module.quantize_int8(mode) if mode else module.dequantize()

    def new_cache(self, batch: int, length: int, like: torch.Tensor, dtype=None) -> KVCache:
        """A cache for ``batch`` rows of ``length`` positions on ``like``'s device, in ``dtype`` (default
        :func:`cache_dtype` of ``like``'s)."""
        dtype = dtype or cache_dtype(like.dtype, like.device)
        return KVCache.allocate(self.config, batch, length, like.device, dtype)

    def prefill(self, inputs_embeds, cache: KVCache):
        """(B, S, d) -> (B, S, d) hidden states after ln_f; writes positions [:S] of `cache` (batch B)."""
        x = inputs_embeds
        for i, block in enumerate(self.h):
            x, _ = block(x, kv=cache.layer(i))
        return self.ln_f(x)

    def step(self, x, cache: KVCache, pos, fixed_shape=False):
        """One position per row: x (B, 1, d) -> (B, 1, d) after ln_f; writes position `pos` of `cache`."""
        for i, block in enumerate(self.h):
            x = block.step(x, cache.layer(i), pos, fixed_shape)
        return self.ln_f(x)
