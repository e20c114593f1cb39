"""The autoregressive decode loop, one copy for every network that can run it (gpt-fast's ``generate.py`` is the
model): prompt planning, ``prefill``, ``step``, the n-token loop ``tokens``, ``decode`` and ``generate``.

A *decoder* is anything with the few attributes and two methods of :class:`Decoder`: `UnifiedVoice` (torch, its own
GPT-2 and KV cache) and the graph backends' `AutoregressiveGraphs` (ONNX Runtime / OpenVINO) both are. Everything the
two have in common lives here, once: which rows share which prompt, the ids the repetition penalty sees, how many
tokens may be drawn, the range check of the learned mel positions, the mel position rule, and the sampling loop, so a
seed draws the same random numbers whatever runs the network. :class:`DecodeLoop` puts these functions on a decoder
as the methods the pipeline calls (``prefill``, ``step``, ``tokens``, ``decode``, ``inference_speech``).

The loop, in three parts: ``prefill`` encodes the prompt once per distinct prompt and sets up a :class:`DecodeState`
for all rows; ``step`` feeds one token per row; ``tokens`` is the n-token loop, a generator of (tokens, latents) per
step that ``decode`` (all rows to the end, with a per-step callback) and the streaming path both consume.

Mel positions (a quirk of the original kept on purpose, see `tortoise.models.autoregressive`): the k-th generated
token gets learned mel position ``n_mel + k - 1 + position_offset``, where :func:`position_offset` is 1 for the
original's cached loop and 0 when it recomputes.
"""
from dataclasses import dataclass, field
from typing import Protocol

import torch

from tortoise.utils.sampling import SamplingOptions, choose_next

POSITION_MODES = ("original", "contiguous", "shifted")


def position_offset(position_mode: str, kv_cache: bool) -> int:
    """The mel position rule: 1 where the original's cached loop gives token k position k + 1 ("original" with a
    cache, or "shifted"), else 0 (positions 0, 1, 2, ... as the original's recomputing loop and training)."""
    if position_mode not in POSITION_MODES:
        raise ValueError(f"position_mode must be one of {POSITION_MODES}, got {position_mode!r}")
    return 1 if position_mode == "shifted" or (position_mode == "original" and kv_cache) else 0


def check_position(last_index: int, n_positions: int):
    """One line, with the fix, when a decode would need a learned mel position the model does not have."""
    if last_index >= n_positions:
        raise ValueError(f"mel position {last_index} exceeds the model's {n_positions} learned positions; lower "
                         f"max_generate_length (or the length of input_tokens)")


@dataclass(eq=False)
class DecodeState:
    """Where a decode stands, for B rows: the next token's logits and latent, what each row has seen, and the
    decoder's own state (a KV cache, or the recomputing loop's prompt rows and tokens so far)."""
    prompt_ids: torch.Tensor      # (B, P) HF's prompt ids (ones, start token, input tokens)
    n_mel: int                    # mel tokens in the prompt (start + input_tokens)
    prompt_len: int               # prompt positions (in the cache)
    max_new: int                  # tokens to draw at most
    seen: torch.Tensor            # (B, V) bool: ids in each row so far (the repetition penalty's view)
    logits: torch.Tensor = None   # (B, V) float32: scores of the next token
    latent: torch.Tensor = None   # (B, d) float32: final-normed hidden state that produced them
    t: int = 0                    # tokens fed so far
    cache: object = None          # the cached loop's keys and values (the decoder's kind)
    prompt: torch.Tensor = None   # recompute mode: (B, P, d) prompt rows
    generated: list = field(default_factory=list)  # recompute mode: tokens fed so far


@dataclass(frozen=True)
class PromptPlan:
    """The distinct prompts of a decode and the rows they feed: ``cond_latent`` (u, d), ``text_inputs`` (u, t) and
    ``mel_tokens`` (u, n_mel: the start token, then any input_tokens) of the u distinct prompts; ``row_map`` (B,)
    the prompt of each of the B rows; ``prompt_ids`` (B, P) what HF's repetition penalty sees of each row's prompt
    (ones for the conditioning and text positions, then the mel tokens)."""
    cond_latent: torch.Tensor
    text_inputs: torch.Tensor
    mel_tokens: torch.Tensor
    row_map: torch.Tensor
    prompt_ids: torch.Tensor

    @property
    def n_mel(self) -> int:
        return self.mel_tokens.shape[1]

    @property
    def rows(self) -> int:
        return self.row_map.shape[0]


def plan_prompt(cond_latent, text_inputs, input_tokens, n: int, start_mel_token: int) -> PromptPlan:
    """Which prompts to encode and which rows they feed, as the original's HF ``generate`` lays them out: each of
    the b (conditioning latent, text) rows repeated ``n`` times; with ``input_tokens`` (r rows, one conditioning
    row), the original tiles them to n rows and HF then expands each row n times: n * n rows."""
    device = cond_latent.device
    b = text_inputs.shape[0]
    if input_tokens is None:
        mel_tokens = torch.full((b, 1), start_mel_token, dtype=torch.long, device=device)
        row_map = torch.arange(b, device=device).repeat_interleave(n)
    else:
        if b != 1 or n % input_tokens.shape[0] != 0:
            raise ValueError("input_tokens needs one conditioning latent/text row and num_return_sequences "
                             "divisible by its number of rows")
        r = input_tokens.shape[0]
        start = torch.full((r, 1), start_mel_token, dtype=torch.long, device=device)
        mel_tokens = torch.cat([start, input_tokens.long().to(device)], dim=1)
        cond_latent, text_inputs = cond_latent.expand(r, -1), text_inputs.expand(r, -1)
        row_map = (torch.arange(n, device=device) % r).repeat_interleave(n)
    text_positions = 1 + text_inputs.shape[1] + 2  # conditioning latent, start, text..., stop
    ones = torch.ones((mel_tokens.shape[0], text_positions), dtype=torch.long, device=device)
    prompt_ids = torch.cat([ones, mel_tokens], dim=1)[row_map]
    return PromptPlan(cond_latent, text_inputs, mel_tokens, row_map, prompt_ids)


class Decoder(Protocol):
    """What the loop needs of a network. Attributes: ``number_mel_codes``, ``stop_mel_token``, ``start_mel_token``,
    ``max_mel_tokens``, ``mel_positions`` (learned mel positions), ``position_offset`` (see :func:`position_offset`).

    ``encode_prompt(plan, state)`` runs the prompt pass for ``plan``'s distinct prompts and fills ``state``'s
    ``logits``, ``latent`` (one row per decode row), ``prompt_len`` and its own ``cache`` / ``prompt``; the cache
    must hold ``state.prompt_len + state.max_new - 1`` positions. ``feed(state, tokens, mel_pos)`` runs one step:
    ``tokens`` (B,) at mel position ``mel_pos`` and cache position ``state.prompt_len + state.t`` (before the
    increment), and returns (logits (B, V), latent (B, d)), float32."""
    number_mel_codes: int
    start_mel_token: int
    stop_mel_token: int
    max_mel_tokens: int
    mel_positions: int
    position_offset: int

    def encode_prompt(self, plan: PromptPlan, state: DecodeState) -> None: ...

    def feed(self, state: DecodeState, tokens: torch.Tensor, mel_pos: int): ...


@torch.no_grad()
def prefill(decoder, cond_latent, text_inputs, num_return_sequences=1, max_generate_length=None,
            input_tokens=None) -> DecodeState:
    """Encode the prompt (conditioning latent + text + start mel token [+ input_tokens]) once per distinct prompt and
    broadcast it to its ``num_return_sequences`` rows -> a :class:`DecodeState` holding the first token's logits.
    ``max_generate_length`` counts the input_tokens (as HF's max_length; default max_mel_tokens - 1)."""
    plan = plan_prompt(cond_latent, text_inputs, input_tokens, num_return_sequences, decoder.start_mel_token)
    max_new = decoder.max_mel_tokens - 1 if max_generate_length is None else max_generate_length
    max_new = max(1, max_new - (plan.n_mel - 1))
    check_position(plan.n_mel + max_new - 1 + decoder.position_offset, decoder.mel_positions)
    seen = torch.zeros(plan.rows, decoder.number_mel_codes, dtype=torch.bool, device=plan.prompt_ids.device)
    seen.scatter_(1, plan.prompt_ids, True)
    state = DecodeState(prompt_ids=plan.prompt_ids, n_mel=plan.n_mel, prompt_len=0, max_new=max_new, seen=seen)
    decoder.encode_prompt(plan, state)
    return state


@torch.no_grad()
def step(decoder, state: DecodeState, tokens):
    """Feed ``tokens`` (B,) at the next position of every row; updates ``state.logits`` / ``state.latent``."""
    t = state.t + 1  # tokens[i] is generated token number t of its row (1-based)
    mel_pos = state.n_mel + t - 1 + decoder.position_offset
    state.logits, state.latent = decoder.feed(state, tokens, mel_pos)
    state.t = t


def tokens(decoder, state: DecodeState, sampling: SamplingOptions):
    """The n-token loop as a generator: per step, sample every row from ``state.logits`` (so the random stream is
    HF's), yield (tokens (B,), latents (B, d) float32: the final-normed states that predicted them), then feed the
    tokens. Rows that produced the stop token keep emitting it (frozen); ends when every row has stopped or
    ``max_new`` tokens were drawn. Nothing is held open across a yield (no grad mode, no autocast)."""
    unfinished = torch.ones(state.seen.shape[0], dtype=torch.bool, device=state.seen.device)
    for t in range(state.max_new):
        chosen = choose_next(state.logits, state.seen, sampling)
        token = torch.where(unfinished, chosen, decoder.stop_mel_token)
        state.seen.scatter_(1, token[:, None], True)
        unfinished &= token != decoder.stop_mel_token
        yield token, state.latent
        if not bool(unfinished.any()) or t == state.max_new - 1:
            return
        step(decoder, state, token)


def decode(decoder, state: DecodeState, sampling: SamplingOptions, callback=None):
    """Decode every row to its end -> (B, steps) codes, stop-token padded. ``callback(step, tokens)`` runs after each
    step (progress; it may raise to stop)."""
    out = []
    for token, _ in tokens(decoder, state, sampling):
        out.append(token)
        if callback is not None:
            callback(len(out), token)
    return torch.stack(out, dim=1)


def generate(decoder, cond_latent, text_inputs, sampling: SamplingOptions, *, input_tokens=None,
             num_return_sequences=1, max_generate_length=None):
    """All rows in one batch, as the original's HF ``generate`` -> (b * n, steps) long codes after the prompt (any
    input_tokens first), each row ending in the stop token and padded with it."""
    state = prefill(decoder, cond_latent, text_inputs, num_return_sequences, max_generate_length, input_tokens)
    codes = decode(decoder, state, sampling)
    return torch.cat([state.prompt_ids[:, state.prompt_ids.shape[1] - (state.n_mel - 1):], codes], dim=1)


class DecodeLoop:
    """The loop's functions as a decoder's methods (the names the pipeline and the original's callers use)."""

    def prefill(self, cond_latent, text_inputs, num_return_sequences=1, max_generate_length=None, input_tokens=None):
        return prefill(self, cond_latent, text_inputs, num_return_sequences, max_generate_length, input_tokens)

    def step(self, state, tokens):
        step(self, state, tokens)

    def tokens(self, state, sampling):
        return tokens(self, state, sampling)

    def decode(self, state, sampling, callback=None):
        return decode(self, state, sampling, callback)

    def inference_speech(self, speech_conditioning_latent, text_inputs, input_tokens=None, num_return_sequences=1,
                         max_generate_length=None, typical_sampling=False, typical_mass=.9, **hf_generate_kwargs):
        """Generate mel codes, as the original's ``UnifiedVoice.inference_speech``: speech_conditioning_latent
        (b, d), text_inputs (b, t) -> (b * n, steps) long codes after the prompt, each row ending in the stop token
        and padded with it (as HF `generate` returns them). Keywords as the original's HF generate: do_sample,
        temperature, top_k, top_p, typical_p, repetition_penalty, length_penalty (no effect, as in HF). All rows
        decode in one batch, as the original's."""
        sampling = SamplingOptions.from_generate_kwargs(typical_sampling, typical_mass, **hf_generate_kwargs)
        return generate(self, speech_conditioning_latent, text_inputs, sampling, input_tokens=input_tokens,
                        num_return_sequences=num_return_sequences, max_generate_length=max_generate_length)
