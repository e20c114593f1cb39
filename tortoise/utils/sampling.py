"""Choosing the next token: small logit filters with the semantics (and order) of transformers 4.31's `generate`.

The original Tortoise samples through Hugging Face `generate(do_sample=True, ...)`, which applies, in this order:
logits processors — repetition penalty over every id already in the sequence (prompt ids included), then any
user processor (Tortoise's own typical-sampling warper when `typical_sampling=True`) — then logits warpers —
temperature, top-k (HF's default top_k is 50), top-p, HF's typical_p — then `softmax` and `torch.multinomial(probs, 1)`.
Greedy decoding applies the processors only, then `argmax`. Each filter here reproduces one of them operation for
operation, so the same scores and the same random state give the same tokens.
"""
from dataclasses import dataclass, fields

import torch

FILTERED = -float("inf")


@dataclass(frozen=True)
class SamplingOptions:
    do_sample: bool = False           # HF's default: greedy
    temperature: float = 1.0
    top_k: int = 50                   # HF's GenerationConfig default, applied by the original when sampling
    top_p: float = 1.0
    typical_p: float = 1.0            # HF's typical warper (a warper: after top-p)
    typical_mass: float = None        # Tortoise's `typical_sampling=True` warper (a processor: before temperature)
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0       # accepted for compatibility; like HF, it has no effect without beam search
    num_beams: int = 1

    def __post_init__(self):
        if self.num_beams != 1:
            raise ValueError("num_beams > 1 (beam search) is not supported by this decoder; use num_beams=1")
        if self.do_sample and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @classmethod
    def from_generate_kwargs(cls, typical_sampling=False, typical_mass=0.9, **kwargs):
        """Build from the keywords the original passes to HF `generate`; unknown ones are an error, not ignored."""
        known = {f.name for f in fields(cls)} - {"typical_mass"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unsupported generate keyword(s) {unknown}; supported: {sorted(known)}")
        given = {k: v for k, v in kwargs.items() if v is not None}
        return cls(typical_mass=typical_mass if typical_sampling else None, **given)


def apply_repetition_penalty(scores, seen, penalty):
    """HF RepetitionPenaltyLogitsProcessor: for ids present in the sequence (seen: (B, V) bool), divide positive
    scores by the penalty and multiply negative ones."""
    if penalty == 1.0:
        return scores
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def apply_temperature(scores, temperature):
    return scores if temperature == 1.0 else scores / temperature


def apply_top_k(scores, top_k):
    """HF TopKLogitsWarper (min_tokens_to_keep=1): drop scores below the k-th largest."""
    if not top_k:
        return scores
    k = min(max(top_k, 1), scores.shape[-1])
    kth = torch.topk(scores, k)[0][..., -1, None]
    return scores.masked_fill(scores < kth, FILTERED)


def apply_top_p(scores, top_p):
    """HF TopPLogitsWarper: drop the lowest tokens whose cumulative probability is at most 1 - top_p."""
    if top_p >= 1.0:
        return scores
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - top_p)
    remove_sorted[..., -1:] = False
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, FILTERED)


def apply_typical(scores, mass, min_tokens_to_keep=1):
    """Typical sampling (Meister et al. 2022, "Locally typical sampling"), as HF's / Tortoise's TypicalLogitsWarper:
    keep the tokens whose surprisal is closest to the entropy until `mass` probability is covered."""
    normalized = torch.log_softmax(scores, dim=-1)
    p = torch.exp(normalized)
    ent = -(normalized * p).nansum(-1, keepdim=True)
    shifted = torch.abs((-normalized) - ent)
    sorted_scores, sorted_indices = torch.sort(shifted, descending=False)
    cumulative = scores.gather(-1, sorted_indices).softmax(dim=-1).cumsum(dim=-1)
    last_ind = (cumulative < mass).sum(dim=1)
    last_ind[last_ind < 0] = 0
    remove_sorted = sorted_scores > sorted_scores.gather(1, last_ind.view(-1, 1))
    remove_sorted[..., :min_tokens_to_keep] = False
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, FILTERED)


def process_scores(scores, seen, opts: SamplingOptions):
    """All filters in the original's order. scores: (B, V) float32; seen: (B, V) bool ids already in the sequence."""
    scores = apply_repetition_penalty(scores, seen, opts.repetition_penalty)
    if opts.typical_mass is not None:
        scores = apply_typical(scores, opts.typical_mass, min_tokens_to_keep=0)  # Tortoise's warper keeps none forcibly
    if not opts.do_sample:
        return scores
    scores = apply_temperature(scores, opts.temperature)
    scores = apply_top_k(scores, opts.top_k)
    scores = apply_top_p(scores, opts.top_p)
    if opts.typical_p < 1.0:
        scores = apply_typical(scores, opts.typical_p, min_tokens_to_keep=1)  # HF's warper keeps the first
    return scores


def choose_next(scores, seen, opts: SamplingOptions):
    """(B, V) scores -> (B,) next tokens: the filters, then multinomial (one draw per row) or argmax."""
    scores = process_scores(scores, seen, opts)
    if not opts.do_sample:
        return torch.argmax(scores, dim=-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1)
