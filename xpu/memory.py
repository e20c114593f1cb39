"""Autoregressive batch sizing from the model config and the device's free memory.

Parameter counts follow UnifiedVoice's construction (GPT-2 blocks from transformers, learned position embeddings,
a conditioning encoder of six attention blocks, text and mel heads); the count for the released config is checked
against the original implementation (421,526,786) in the tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from .device import DeviceInfo, describe

# UnifiedVoice's constructor defaults (the original's signature): what a config dict does not say.
UNIFIED_VOICE_DEFAULTS: dict[str, Any] = dict(
    layers=8, model_dim=512, heads=8, max_text_tokens=120, max_mel_tokens=250, max_conditioning_inputs=1,
    mel_length_compression=1024, number_text_tokens=256, start_text_token=None, number_mel_codes=8194,
    start_mel_token=8192, stop_mel_token=8193, train_solo_embeddings=False, use_mel_codes_as_input=True,
    checkpointing=True, types=1)
CONDITIONING_ATTN_BLOCKS = 6  # ConditioningEncoder(80, model_dim) default
MEL_CHANNELS = 80
MEMORY_MARGIN = 0.85  # use at most this fraction of free memory ...
RESERVE_BYTES = 256 << 20  # ... less this much for the allocator, the runtime and the other stages' scratch
DEFAULT_MAX_BATCH = 256
ALLOCATION_MARGIN = 0.9  # keep the largest tensor under 90% of a device's single-allocation limit


# The released Tortoise autoregressive model's constructor kwargs. They live here, in the lowest layer, so that the
# device report (`python -m xpu`) can size batches for the released model without importing `tortoise`;
# `tortoise.utils.checkpoints.RELEASED_CONFIGS["autoregressive"]` is this dict.
RELEASED_AR_CONFIG: dict[str, Any] = dict(
    max_mel_tokens=604, max_text_tokens=402, max_conditioning_inputs=2, layers=30, model_dim=1024, heads=16,
    number_text_tokens=255, start_text_token=255, checkpointing=False, train_solo_embeddings=False)


def released_ar_config() -> dict[str, Any]:
    """A copy of :data:`RELEASED_AR_CONFIG`."""
    return dict(RELEASED_AR_CONFIG)


def _full_config(config: Mapping[str, Any]) -> dict[str, Any]:
    cfg = UNIFIED_VOICE_DEFAULTS | dict(config)
    if not cfg["use_mel_codes_as_input"]:
        raise ValueError("use_mel_codes_as_input=False (MelEncoder input) is not supported: "
                         "Tortoise's released models use mel codes; set it to True")
    return cfg


def ar_param_count(config: Mapping[str, Any]) -> int:
    """Number of parameters of ``UnifiedVoice(**config)``."""
    c = _full_config(config)
    d, n_layers = c["model_dim"], c["layers"]
    n_text = c["number_text_tokens"] * c["types"] + 1
    n_mel = c["number_mel_codes"]
    gpt_block = 12 * d * d + 13 * d  # ln_1, c_attn (d→3d), c_proj, ln_2, mlp c_fc (d→4d), c_proj (4d→d)
    gpt = n_layers * gpt_block + 2 * d  # + ln_f
    attn_block = 4 * d * d + 6 * d  # GroupNorm(2d), qkv conv (d→3d), proj_out conv (d→d)
    conditioning = MEL_CHANNELS * d + d + CONDITIONING_ATTN_BLOCKS * attn_block
    positions = (c["max_mel_tokens"] + 2 + c["max_conditioning_inputs"]) * d + (c["max_text_tokens"] + 2) * d
    embeddings = n_text * d + n_mel * d + (2 * d if c["train_solo_embeddings"] else 0)
    heads = 2 * d + (d * n_text + n_text) + (d * n_mel + n_mel)  # final_norm, text_head, mel_head
    return gpt + conditioning + positions + embeddings + heads


def ar_max_sequence(config: Mapping[str, Any]) -> int:
    """Longest sequence the GPT sees: conditioning inputs + text (with start/stop) + mel codes (with start/stop)."""
    c = _full_config(config)
    return c["max_conditioning_inputs"] + c["max_text_tokens"] + 2 + c["max_mel_tokens"] + 2


@dataclasses.dataclass(frozen=True)
class ArMemoryEstimate:
    """Bytes needed by one batched autoregressive run at the longest sequence."""
    weights: int
    kv_cache: int  # all layers, keys and values
    activations: int  # one layer's live activations during prefill (residual, qkv, mlp, attention scores)
    logits: int  # float32 logits over the mel vocabulary for every position (latent pass / full forward)
    largest_tensor: int  # the biggest single buffer (Arc A-series cannot allocate one over 4 GiB)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.logits


def ar_memory(config: Mapping[str, Any], batch_size: int, dtype_bytes: int,
              weights_loaded: bool = False, cache_bytes: int | None = None) -> ArMemoryEstimate:
    """The memory breakdown of :func:`estimate_ar_memory`; ``weights_loaded`` leaves the weights out (they are
    already resident, so already missing from the free memory); ``cache_bytes``: bytes per KV-cache element when it
    differs from the weights' (a CPU keeps the cache in float32 under half weights)."""
    c = _full_config(config)
    b, d, h, s = batch_size, c["model_dim"], c["heads"], ar_max_sequence(c)
    weights = 0 if weights_loaded else ar_param_count(c) * dtype_bytes
    kv_layer = b * h * s * (d // h) * (cache_bytes or dtype_bytes)  # keys (or values) of one layer: [b, h, s, hd]
    kv_cache = c["layers"] * 2 * kv_layer
    scores = b * h * s * s * 4  # [b, heads, s, s] float32 softmax where attention is not fused
    hidden = b * s * (2 * d + 3 * d + 4 * d) * dtype_bytes  # residual + norm out, qkv, mlp hidden
    logits = b * s * c["number_mel_codes"] * 4  # [b, s, vocab] float32
    largest = max(2 * kv_layer, scores, logits, b * s * 4 * d * dtype_bytes,
                  c["number_mel_codes"] * d * dtype_bytes)
    return ArMemoryEstimate(weights, kv_cache, hidden + scores, logits, largest)


def estimate_ar_memory(config: Mapping[str, Any], batch_size: int, dtype_bytes: int) -> int:
    """Bytes for weights + KV cache at the longest sequence + activations + logits of a ``batch_size`` AR run."""
    return ar_memory(config, batch_size, dtype_bytes).total


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    batch_size: int
    reason: str  # one line: why this size
    budget: int | None  # bytes usable (None when the size was requested)
    estimate: ArMemoryEstimate | None  # at the chosen size
    fits: bool  # False when even batch 1 exceeds the budget (the run may still work with offloading)


def _dtype_bytes(dtype: torch.dtype | None) -> int:
    return 4 if dtype is None else torch.empty((), dtype=dtype, device="meta").element_size()


def plan_batch_size(device: str | torch.device | DeviceInfo | None = None, ar_config: Mapping[str, Any] | None = None,
                    dtype: torch.dtype | None = None, requested: int | None = None, max_batch: int | None = None,
                    weights_loaded: bool = False, resident_bytes: int = 0) -> BatchPlan:
    """Choose the autoregressive batch size; see :func:`pick_batch_size`. ``resident_bytes``: memory other models
    will hold on the device during the AR stage but do not hold yet (subtracted from the budget)."""
    if requested is not None:
        if int(requested) < 1:
            raise ValueError(f"batch size must be at least 1, got {requested}")
        return BatchPlan(int(requested), "requested explicitly", None, None, True)
    info = device if isinstance(device, DeviceInfo) else describe(device)
    config = released_ar_config() if ar_config is None else ar_config
    max_batch = DEFAULT_MAX_BATCH if max_batch is None else max(int(max_batch), 1)
    budget = int(info.free_memory * MEMORY_MARGIN) - RESERVE_BYTES - int(resident_bytes)
    nbytes = _dtype_bytes(dtype)
    cache_bytes = 4 if info.type == "cpu" else nbytes  # tortoise.models.gpt2.cache_dtype
    max_tensor = None if info.max_allocation is None else int(info.max_allocation * ALLOCATION_MARGIN)
    best, limit = 1, f"max_batch {max_batch}"
    candidate = 1
    while candidate <= max_batch:
        est = ar_memory(config, candidate, nbytes, weights_loaded, cache_bytes)
        if est.total > budget:
            limit = "free memory"
            break
        if max_tensor is not None and est.largest_tensor > max_tensor:
            limit = f"single-allocation limit {info.max_allocation / (1 << 30):.0f} GiB"
            break
        best, candidate = candidate, candidate * 2
    est = ar_memory(config, best, nbytes, weights_loaded, cache_bytes)
    fits = est.total <= budget and (max_tensor is None or est.largest_tensor <= max_tensor)
    free_note = " (estimated)" if info.free_memory_is_estimate else ""
    resident = f", {resident_bytes / (1 << 30):.1f} GiB for other models" if resident_bytes else ""
    reason = (f"largest power of two within {MEMORY_MARGIN:.0%} of {info.free_memory / (1 << 30):.1f} GiB "
              f"free{free_note} less {RESERVE_BYTES >> 20} MiB{resident}; limited by {limit}")
    if not fits:
        reason = (f"even batch 1 needs {est.total / (1 << 30):.2f} GiB, more than the "
                  f"{max(budget, 0) / (1 << 30):.2f} GiB available: use --half or low-VRAM offloading")
    return BatchPlan(best, reason, budget, est, fits)


def pick_batch_size(device: str | torch.device | DeviceInfo | None = None, ar_config: Mapping[str, Any] | None = None,
                    dtype: torch.dtype | None = None, requested: int | None = None, max_batch: int | None = None,
                    weights_loaded: bool = False, resident_bytes: int = 0) -> int:
    """The largest power-of-two autoregressive batch whose estimated memory (:func:`estimate_ar_memory`, with
    ``dtype`` weights/cache; None = float32) fits the device's free memory with a margin, with no single tensor at
    or over the device's allocation limit (4 GiB on Arc A-series). ``requested`` always wins; ``ar_config`` defaults
    to the released model; ``max_batch`` caps the result (e.g. the number of samples wanted). Call it after the
    models are on the device with ``weights_loaded=True``, or before with ``resident_bytes`` for the other models."""
    return plan_batch_size(device, ar_config, dtype, requested, max_batch, weights_loaded,
                           resident_bytes).batch_size
