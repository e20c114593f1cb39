"""UnifiedVoice: Tortoise's autoregressive text-to-speech-code model, with its own GPT-2 and a fast decode loop.

State-dict compatible with the released `autoregressive.pth` (see `released_to_ours` for the explicit key map).
Same constructor keywords, submodule names and public methods as the original (`tortoise-tts` 3.0.0):
`get_conditioning`, `inference_speech`, `forward(..., return_latent=True)`, `post_init_gpt2_config`.

Decoding (`inference_speech`; the loop itself lives in `tortoise.models.decoding`, shared with the graph backends;
this class is one of its decoders): the prompt (conditioning latent + text + start mel token) is prefilled once per
distinct prompt and its keys/values broadcast to all `num_return_sequences` rows of a preallocated KV cache; each
step then feeds one token per row, writes its keys/values in place and computes the mel head on that position only.
Sampling follows transformers 4.31's `generate` filter by filter (`tortoise.utils.sampling`), so on CPU fp32 the
same seed gives the same codes as the original.

Speed switches (`post_init_gpt2_config`): CPU fp32 steps at batch >= 2, and bf16 steps at any batch, use
oneDNN-prepacked linear weights (`prepack=True`, the default; +1.5 GB at full size in fp32), and bf16 steps of
1-4 rows use a float32 copy of the weights instead where that measured faster when decoding started
(`tortoise.models.gpt2.plan_half_rows`: --half never slower than fp32 at a step's shape); `int8=True` (CPU,
opt-in) runs the linears in int8 (several times faster, not exact); `compile=True` torch.compiles the fixed-shape
step (works, same codes on the tiny model; on a 2-core CPU it was not faster than the prepacked eager step). The
pipeline (`tortoise.pipeline.sample_codes`) decodes the samples in batches, and an out-of-memory error halves the
batch and retries with a warning. Batching changes the random stream (each batch draws its own (rows, V)
multinomial), so codes equal the original's only when all samples are one batch.

Mel positions while decoding — a quirk of the original kept on purpose: with `kv_cache=True` the original's
inference model gives the k-th generated token the learned mel position k + 1 (it derives it from the attention
mask length, one past the token's own index), while with `kv_cache=False` it recomputes the whole sequence with
positions 0, 1, 2, ... (as in training). `position_mode="original"` (the default) reproduces whichever the
`kv_cache` setting implies; "contiguous" gives 0, 1, 2, ... with the fast cached loop (the same codes as the
original's default `kv_cache=False`, fast); "shifted" forces the +1 quirk.
"""
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.arch_util import AttentionBlock
from tortoise.models.gpt2 import GPT2Config, GPT2Model, KVCache, can_prepack, packed_rows
from tortoise.models.decoding import POSITION_MODES, DecodeLoop, DecodeState, position_offset  # noqa: F401


class ResBlock(nn.Module):
    """Residual conv block with GroupNorm (used by MelEncoder)."""

    def __init__(self, chan):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(chan, chan, kernel_size=3, padding=1),
            nn.GroupNorm(chan // 8, chan),
            nn.ReLU(),
            nn.Conv1d(chan, chan, kernel_size=3, padding=1),
            nn.GroupNorm(chan // 8, chan),
        )

    def forward(self, x):
        return F.relu(self.net(x) + x)


class ConditioningEncoder(nn.Module):
    """Mel (B, 80, S) -> one conditioning vector (B, d): a 1x1 conv then attention blocks; first frame (or mean)."""

    def __init__(self, spec_dim, embedding_dim, attn_blocks=6, num_attn_heads=4, do_checkpointing=False, mean=False):
        super().__init__()
        self.init = nn.Conv1d(spec_dim, embedding_dim, kernel_size=1)
        self.attn = nn.Sequential(*[AttentionBlock(embedding_dim, num_attn_heads) for _ in range(attn_blocks)])
        self.dim = embedding_dim
        self.do_checkpointing = do_checkpointing
        self.mean = mean

    def forward(self, x):
        h = self.attn(self.init(x))  # (B, d, S)
        return h.mean(dim=2) if self.mean else h[:, :, 0]


class LearnedPositionEmbeddings(nn.Module):
    def __init__(self, seq_len, model_dim, init=.02):
        super().__init__()
        self.emb = nn.Embedding(seq_len, model_dim)
        self.emb.weight.data.normal_(mean=0.0, std=init)

    def forward(self, x):  # (B, S, ...) -> (S, d) positions 0..S-1
        return self.emb.weight[:x.shape[1]]

    def get_fixed_embedding(self, ind, dev):  # -> (1, 1, d)
        return self.emb(torch.tensor([ind], device=dev)).unsqueeze(0)


def build_hf_gpt_transformer(layers, model_dim, heads, max_mel_seq_len, max_text_seq_len, checkpointing):
    """The GPT-2 stack (no token/position embeddings) and the learned mel and text position embeddings."""
    cfg = GPT2Config(n_embd=model_dim, n_layer=layers, n_head=heads, n_positions=max_mel_seq_len + max_text_seq_len)
    return (GPT2Model(cfg), LearnedPositionEmbeddings(max_mel_seq_len, model_dim),
            LearnedPositionEmbeddings(max_text_seq_len, model_dim), None, None)


class MelEncoder(nn.Module):
    def __init__(self, channels, mel_channels=80, resblocks_per_reduction=2):
        super().__init__()
        self.channels = channels
        self.encoder = nn.Sequential(
            nn.Conv1d(mel_channels, channels // 4, kernel_size=3, padding=1),
            nn.Sequential(*[ResBlock(channels // 4) for _ in range(resblocks_per_reduction)]),
            nn.Conv1d(channels // 4, channels // 2, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(channels // 16, channels // 2),
            nn.ReLU(),
            nn.Sequential(*[ResBlock(channels // 2) for _ in range(resblocks_per_reduction)]),
            nn.Conv1d(channels // 2, channels, kernel_size=3, stride=2, padding=1),
            nn.GroupNorm(channels // 8, channels),
            nn.ReLU(),
            nn.Sequential(*[ResBlock(channels) for _ in range(resblocks_per_reduction)]),
        )
        self.reduction = 4

    def forward(self, x):  # (B, 80, S) -> (B, S/4, channels)
        return self.encoder(x).permute(0, 2, 1)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint key map

def _is_legacy_attention_buffer(key):
    """HF GPT-2 < 4.2x saved its causal mask (`attn.bias`, (1,1,n,n) tril) and `attn.masked_bias` (-1e4)."""
    return key.startswith("gpt.h.") and (key.endswith(".attn.bias") or key.endswith(".attn.masked_bias"))


# Modules the original aliases after `post_init_gpt2_config` (same tensors under a second name).
_ALIAS_PREFIXES = ("inference_model.", "gpt.wte.")


def released_to_ours(state_dict):
    """Map a released-format UnifiedVoice state dict onto ours.

    Dropped, with a check of what they are: the legacy per-layer attention buffers `gpt.h.N.attn.bias` (the causal
    mask) and `gpt.h.N.attn.masked_bias` (a constant) that checkpoints saved with older transformers contain and the
    original ignores (it loads with strict=False); and the aliases a model saved after `post_init_gpt2_config`
    carries (`gpt.wte.*` = `mel_embedding.*`, `inference_model.*` = the gpt, mel embeddings, norm and head).
    Everything else is kept as is and must then match strictly.
    """
    out = {}
    for key, value in state_dict.items():
        if _is_legacy_attention_buffer(key):
            _check_legacy_buffer(key, value)
        elif not key.startswith(_ALIAS_PREFIXES):
            out[key] = value
    return out


LEGACY_MASKED_BIAS = -1e4  # the constant HF GPT-2 stored as `attn.masked_bias`


def _check_legacy_buffer(key, value):
    """A legacy buffer must be what it claims to be, in whatever dtype it was saved (uint8 in the released file, bool
    or fp16 in fine-tunes): `attn.bias` a (1, 1, n, n) lower-triangular causal mask, `attn.masked_bias` -1e4."""
    if key.endswith("masked_bias"):
        ok = value.numel() == 1 and float(value.float().reshape(())) == LEGACY_MASKED_BIAS
    else:
        n = value.shape[-1]
        ok = value.dim() == 4 and value.shape[:2] == (1, 1) and value.shape[2] == n and bool(
            torch.equal(value[0, 0] != 0, torch.ones(n, n, dtype=torch.bool).tril()))
    if not ok:
        raise ValueError(f"checkpoint key {key} (shape {tuple(value.shape)}, {value.dtype}) is not the GPT-2 "
                         f"{'constant -1e4' if key.endswith('masked_bias') else 'causal-mask buffer'} it is expected "
                         f"to be; the file is not a Tortoise autoregressive checkpoint")


def legacy_attention_buffers(n_layers, n_positions):
    """The buffers HF GPT-2 saved per layer before transformers 4.31 (what the released autoregressive.pth holds):
    {`gpt.h.N.attn.bias`: uint8 causal mask (1, 1, n, n), `gpt.h.N.attn.masked_bias`: -1e4}."""
    mask = torch.ones(n_positions, n_positions, dtype=torch.uint8).tril().view(1, 1, n_positions, n_positions)
    out = {}
    for i in range(n_layers):
        out[f"gpt.h.{i}.attn.bias"] = mask.clone()
        out[f"gpt.h.{i}.attn.masked_bias"] = torch.tensor(LEGACY_MASKED_BIAS)
    return out


class UnifiedVoice(nn.Module, DecodeLoop):
    def __init__(self, layers=8, model_dim=512, heads=8, max_text_tokens=120, max_mel_tokens=250,
                 max_conditioning_inputs=1, mel_length_compression=1024, number_text_tokens=256,
                 start_text_token=None, number_mel_codes=8194, start_mel_token=8192,
                 stop_mel_token=8193, train_solo_embeddings=False, use_mel_codes_as_input=True,
                 checkpointing=True, types=1):
        """Arguments as the original: transformer depth/width/heads, token budgets (max_text_tokens,
        max_mel_tokens, max_conditioning_inputs), mel_length_compression (wav samples per mel code), vocabulary
        sizes and special tokens. `checkpointing` is accepted and unused (inference only)."""
        super().__init__()
        self.number_text_tokens = number_text_tokens
        self.start_text_token = number_text_tokens * types if start_text_token is None else start_text_token
        self.stop_text_token = 0
        self.number_mel_codes = number_mel_codes
        self.start_mel_token = start_mel_token
        self.stop_mel_token = stop_mel_token
        self.layers = layers
        self.heads = heads
        self.max_mel_tokens = max_mel_tokens
        self.max_text_tokens = max_text_tokens
        self.model_dim = model_dim
        self.max_conditioning_inputs = max_conditioning_inputs
        self.mel_length_compression = mel_length_compression
        self.conditioning_encoder = ConditioningEncoder(80, model_dim, num_attn_heads=heads)
        self.text_embedding = nn.Embedding(self.number_text_tokens * types + 1, model_dim)
        if use_mel_codes_as_input:
            self.mel_embedding = nn.Embedding(self.number_mel_codes, model_dim)
        else:
            self.mel_embedding = MelEncoder(model_dim, resblocks_per_reduction=1)
        (self.gpt, self.mel_pos_embedding, self.text_pos_embedding, self.mel_layer_pos_embedding,
         self.text_layer_pos_embedding) = build_hf_gpt_transformer(
            layers, model_dim, heads, self.max_mel_tokens + 2 + self.max_conditioning_inputs,
            self.max_text_tokens + 2, checkpointing)
        if train_solo_embeddings:
            self.mel_solo_embedding = nn.Parameter(torch.randn(1, 1, model_dim) * .02, requires_grad=True)
            self.text_solo_embedding = nn.Parameter(torch.randn(1, 1, model_dim) * .02, requires_grad=True)
        else:
            self.mel_solo_embedding = 0
            self.text_solo_embedding = 0
        self.final_norm = nn.LayerNorm(model_dim)
        self.text_head = nn.Linear(model_dim, self.number_text_tokens * types + 1)
        self.mel_head = nn.Linear(model_dim, self.number_mel_codes)
        embeddings = [self.text_embedding] + ([self.mel_embedding] if use_mel_codes_as_input else [])
        for module in embeddings:
            module.weight.data.normal_(mean=0.0, std=.02)
        self.kv_cache = False
        self.position_mode = "original"
        self.prepack = True
        self._compiled_step = None

    # -- checkpoints ----------------------------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict=True, assign=False):
        """Loads our own or a released-format state dict (see `released_to_ours` for what is dropped and why)."""
        return super().load_state_dict(released_to_ours(state_dict), strict=strict, assign=assign)

    @classmethod
    def convert_checkpoint(cls, state_dict):
        return released_to_ours(state_dict)

    @classmethod
    def config_for_checkpoint(cls, config, state_dict):
        """The text vocabulary is the checkpoint's: a fine-tune trained with its own tokenizer has another number of
        `text_embedding` rows (number_text_tokens + 1, the last being the start token, as in the released file:
        255 tokens, start token 255)."""
        weight = state_dict.get("text_embedding.weight")
        types = config.get("types", 1)
        if weight is None or types != 1 or weight.shape[0] == config.get("number_text_tokens", 256) + 1:
            return config
        rows = weight.shape[0]
        return dict(config, number_text_tokens=rows - 1, start_text_token=rows - 1)

    def released_state_dict(self):
        """Our weights laid out as the released `autoregressive.pth`: the state dict plus, in HF's order (after each
        layer's `ln_1`), the legacy uint8 causal mask and -1e4 buffers that file carries."""
        legacy = legacy_attention_buffers(len(self.gpt.h), self.gpt.config.n_positions)
        out = {}
        for key, value in self.state_dict().items():
            out[key] = value
            if key.startswith("gpt.h.") and key.endswith(".ln_1.bias"):
                layer = key[:-len("ln_1.bias")]
                out[layer + "attn.bias"] = legacy[layer + "attn.bias"]
                out[layer + "attn.masked_bias"] = legacy[layer + "attn.masked_bias"]
        return out

    def post_init_gpt2_config(self, use_deepspeed=False, kv_cache=False, half=False, *, position_mode="original",
                              compile=False, prepack=True, int8=False):
        """Inference settings (the original built its HF inference model here). `use_deepspeed` is accepted and
        ignored (no DeepSpeed kernels here); `kv_cache` picks the cached loop (True) or recomputation (False);
        `half` is a dtype (torch.float16 / torch.bfloat16) to hold the weights in (see `to_precision`), False for
        float32; `compile` torch.compiles the fixed-shape decode step (cached loop only); `prepack` lets CPU
        decoding at batch >= 2 use oneDNN-prepacked weights (about 1.3x faster steps, a second copy of the linear
        weights, packed on first use); `int8` (CPU, float32 weights, opt-in) runs the transformer's linears in int8
        (`tortoise.models.gpt2.int8_mode`: weight-only with bf16 activations for the decode steps where the CPU
        has native bf16, else dynamic quantization) — several times faster, no longer exact: codes drift from fp32;
        `position_mode` see the module docstring."""
        position_offset(position_mode, kv_cache)  # validates position_mode
        if half is True:
            raise ValueError("half takes the dtype to hold the weights in (torch.float16 or torch.bfloat16); "
                             "TextToSpeech(half=True) picks it for the device")
        if use_deepspeed:
            warnings.warn("use_deepspeed is ignored: this implementation has its own fused decode loop")
        if half:
            self.to_precision(half)
        if int8 and self.mel_head.weight.device.type != "cpu":
            raise ValueError("int8=True is a CPU mode (dynamic quantization); on GPUs use half precision instead")
        if int8 and self.dtype != torch.float32:
            raise ValueError("int8=True quantizes float32 weights; it does not combine with half precision")
        self.kv_cache, self.position_mode, self.prepack = bool(kv_cache), position_mode, prepack
        self._compiled_step = None
        if compile:  # freezing: weights become constants inductor may prepack (oneDNN on CPU)
            self._compiled_step = torch.compile(self._step_fixed, dynamic=False, options={"freezing": True})
        if not prepack or compile:
            self.gpt.unpack()
        self.gpt.quantize_int8(int8)
        self.eval()

    @property
    def dtype(self):
        """The dtype the transformer computes in (its weights')."""
        return self.mel_embedding.weight.dtype

    def to_precision(self, dtype):
        """Hold the weights in ``dtype`` (half precision), except the final norm and the heads, which stay float32:
        the latents the diffusion model reads and the logits the sampler reads are computed in float32. The
        transformer's LayerNorms and attention softmax accumulate in float32 inside PyTorch's kernels."""
        self.to(dtype)
        for module in (self.final_norm, self.mel_head, self.text_head):
            module.float()
        self.gpt.unpack()
        return self

    # -- teacher-forced forward (training layout; also the latent pass) -----------------------------------------------
    def build_aligned_inputs_and_targets(self, input, start_token, stop_token):
        return F.pad(input, (1, 0), value=start_token), F.pad(input, (0, 1), value=stop_token)

    def set_mel_padding(self, mel_input_tokens, wav_lengths):
        """Replace codes past each clip's true length (+1) with the stop token (returns a new tensor)."""
        mel_lengths = torch.div(wav_lengths, self.mel_length_compression, rounding_mode='trunc')
        positions = torch.arange(mel_input_tokens.shape[-1], device=mel_input_tokens.device)
        past_end = positions[None, :] >= (mel_lengths[:, None] + 1)
        return mel_input_tokens.masked_fill(past_end, self.stop_mel_token)

    def get_logits(self, speech_conditioning_inputs, first_inputs, first_head, second_inputs=None, second_head=None,
                   get_attns=False, return_latent=False):
        parts = [speech_conditioning_inputs, first_inputs] + ([second_inputs] if second_inputs is not None else [])
        x = torch.cat([part.to(self.dtype) for part in parts], dim=1)
        gpt_out = self.gpt(inputs_embeds=x, return_dict=True, output_attentions=get_attns)
        if get_attns:
            return gpt_out.attentions
        enc = gpt_out.last_hidden_state[:, 1:]  # the first position belongs to the conditioning input
        n_cond, n_first = speech_conditioning_inputs.shape[1], first_inputs.shape[1]
        if return_latent:
            first = self.final_norm(enc[:, n_cond:n_cond + n_first].float())  # norm and heads in float32
            return first, self.final_norm(enc[:, -second_inputs.shape[1]:].float())
        enc = self.final_norm(enc.float())
        first_logits = first_head(enc[:, :n_first]).permute(0, 2, 1)
        if second_inputs is None:
            return first_logits
        return first_logits, second_head(enc[:, -second_inputs.shape[1]:]).permute(0, 2, 1)

    def get_conditioning(self, speech_conditioning_input):
        """(B, 80, S) or (B, N, 80, S) mels -> (B, d) float32: the mean over the N clips of the conditioning encoder."""
        if speech_conditioning_input.dim() == 3:
            speech_conditioning_input = speech_conditioning_input.unsqueeze(1)
        mels = speech_conditioning_input.to(self.dtype)
        conds = [self.conditioning_encoder(mels[:, j]).float() for j in range(mels.shape[1])]
        return torch.stack(conds, dim=1).mean(dim=1)

    def forward(self, speech_conditioning_latent, text_inputs, text_lengths, mel_codes, wav_lengths, types=None,
                text_first=True, raw_mels=None, return_attentions=False, return_latent=False, clip_inputs=True):
        """Teacher-forced pass. speech_conditioning_latent (b, d); text_inputs (b, t); text_lengths (b,);
        mel_codes (b, m); wav_lengths (b,). Returns (text loss, mel loss, mel logits (b, V, m+2)); with
        return_attentions the attentions (sic: the original returns the mel logits variable, holding them);
        with return_latent the final-norm hidden states (b, m, d) that predict each code."""
        if types is not None:
            text_inputs = text_inputs * (1 + types).unsqueeze(-1)
        if clip_inputs:
            text_inputs = text_inputs[:, :text_lengths.max()]
            max_mel_len = wav_lengths.max() // self.mel_length_compression
            mel_codes = mel_codes[:, :max_mel_len]
            if raw_mels is not None:
                raw_mels = raw_mels[:, :, :max_mel_len * 4]
        mel_codes = self.set_mel_padding(mel_codes, wav_lengths)
        text_inputs = F.pad(text_inputs, (0, 1), value=self.stop_text_token)
        mel_codes = F.pad(mel_codes, (0, 1), value=self.stop_mel_token)
        conds = speech_conditioning_latent.unsqueeze(1)
        text_inputs, text_targets = self.build_aligned_inputs_and_targets(
            text_inputs, self.start_text_token, self.stop_text_token)
        text_emb = self.text_embedding(text_inputs) + self.text_pos_embedding(text_inputs)
        mel_codes, mel_targets = self.build_aligned_inputs_and_targets(
            mel_codes, self.start_mel_token, self.stop_mel_token)
        mel_inp = F.pad(raw_mels, (0, 8)) if raw_mels is not None else mel_codes
        mel_emb = self.mel_embedding(mel_inp) + self.mel_pos_embedding(mel_codes)
        if text_first:
            text_logits, mel_logits = self.get_logits(conds, text_emb, self.text_head, mel_emb, self.mel_head,
                                                      get_attns=return_attentions, return_latent=return_latent)
            if return_latent:
                return mel_logits[:, :-2]  # strip the two tokens this pass added
        else:
            mel_logits, text_logits = self.get_logits(conds, mel_emb, self.mel_head, text_emb, self.text_head,
                                                      get_attns=return_attentions, return_latent=return_latent)
            if return_latent:
                return text_logits[:, :-2]
        if return_attentions:
            return mel_logits
        loss_text = F.cross_entropy(text_logits, text_targets.long())
        loss_mel = F.cross_entropy(mel_logits, mel_targets.long())
        return loss_text.mean(), loss_mel.mean(), mel_logits

    # -- decoding ---------------------------------------------------------------------------------------------------
    def compute_embeddings(self, cond_latents, text_inputs):
        """(b, d), (b, t) -> (b, 1 + t + 2, d): conditioning latent, then [start, text..., stop] with positions."""
        text_inputs = F.pad(text_inputs, (0, 1), value=self.stop_text_token)
        text_inputs = F.pad(text_inputs, (1, 0), value=self.start_text_token)
        emb = self.text_embedding(text_inputs) + self.text_pos_embedding(text_inputs)
        return torch.cat([cond_latents.to(emb.dtype).unsqueeze(1), emb], dim=1)

    def prompt_embeddings(self, cond_latents, text_inputs, mel_tokens):
        """(b, d), (b, t), (b, n) start mel token [+ input tokens] -> (b, 1 + t + 2 + n, d): the decode's prompt."""
        mel_emb = self.mel_embedding(mel_tokens) + self.mel_pos_embedding(mel_tokens)
        return torch.cat([self.compute_embeddings(cond_latents, text_inputs), mel_emb], dim=1)

    def _mel_step_embedding(self, tokens, position):  # (B,) long, int or 0-d tensor -> (B, 1, d)
        if isinstance(position, torch.Tensor):  # traced (compiled) step: a gather, not a Python index
            return (self.mel_embedding(tokens) + self.mel_pos_embedding.emb(position.view(1))).unsqueeze(1)
        return (self.mel_embedding(tokens) + self.mel_pos_embedding.emb.weight[position]).unsqueeze(1)

    def _final(self, hidden):  # (B, d) -> latent (B, d), logits (B, V): float32 (norm and head held in float32)
        latent = self.final_norm(hidden.float())
        return latent, self.mel_head(latent)

    @property
    def position_offset(self) -> int:
        """The decode loop's mel position rule (`tortoise.models.decoding.position_offset`)."""
        return position_offset(self.position_mode, self.kv_cache)

    @property
    def mel_positions(self) -> int:
        """The number of learned mel positions (the decode loop's range check)."""
        return self.mel_pos_embedding.emb.num_embeddings

    # -- the decoder protocol (`tortoise.models.decoding`: prefill / step / tokens / decode / inference_speech) -------
    def encode_prompt(self, plan, state):
        """The prompt pass: embeds the plan's distinct prompts, prefills a small cache once per prompt and broadcasts
        it to every row of a cache long enough for the whole decode; recomputing (``kv_cache=False``), keeps the
        prompt rows instead."""
        prompt = self.prompt_embeddings(plan.cond_latent, plan.text_inputs, plan.mel_tokens)  # (u, P, d)
        state.prompt_len = prompt.shape[1]
        if not self.kv_cache:  # recompute the whole sequence at every step (the original without a cache)
            state.prompt = prompt[plan.row_map]
            state.latent, state.logits = self._final(self.gpt(inputs_embeds=state.prompt).last_hidden_state[:, -1])
            return
        if self._should_prepack(plan.rows, prompt):
            self.gpt.prepack(plan.rows)
            if prompt.dtype != torch.float32:  # once: small steps from a float32 copy where that measured faster
                self.gpt.plan_half_rows()
        small = self.gpt.new_cache(prompt.shape[0], prompt.shape[1], prompt)
        latent, logits = self._final(self.gpt.prefill(prompt, small)[:, -1])  # once per distinct prompt
        state.latent, state.logits = latent[plan.row_map], logits[plan.row_map]
        state.cache = self.gpt.new_cache(plan.rows, prompt.shape[1] + state.max_new - 1, prompt)
        state.cache.broadcast_from(small, plan.row_map, prompt.shape[1])

    def _should_prepack(self, rows, prompt):
        return (self.prepack and self._compiled_step is None and rows >= packed_rows(prompt.dtype)[0]
                and prompt.device.type == "cpu" and can_prepack(prompt.dtype))

    def feed(self, state, tokens, mel_pos):
        """One step: ``tokens`` (B,) at ``mel_pos`` -> (logits, latent) of the next position, float32."""
        if state.cache is None:
            state.generated.append(tokens)
            gen = torch.stack(state.generated, dim=1)  # (B, t)
            positions = torch.arange(gen.shape[1], device=gen.device) + state.n_mel + self.position_offset
            x = torch.cat([state.prompt, self.mel_embedding(gen) + self.mel_pos_embedding.emb.weight[positions]], 1)
            hidden = self.gpt(inputs_embeds=x).last_hidden_state[:, -1]
        else:
            cache_pos = state.prompt_len + state.t
            if self._compiled_step is not None:
                dev = tokens.device
                hidden = self._compiled_step(tokens, torch.tensor(mel_pos, device=dev), state.cache.tensors,
                                             torch.tensor(cache_pos, device=dev))
            else:
                hidden = self.gpt.step(self._mel_step_embedding(tokens, mel_pos), state.cache, cache_pos)[:, 0]
        latent, logits = self._final(hidden)
        return logits, latent

    def _step_fixed(self, tokens, mel_pos, cache_tensors, cache_pos):
        """The fixed-shape step torch.compile compiles: every tensor's shape is the same at every step."""
        x = self._mel_step_embedding(tokens, mel_pos)
        return self.gpt.step(x, KVCache(cache_tensors), cache_pos, fixed_shape=True)[:, 0]
