"""CLVP: contrastive scoring of speech-code candidates against their text (a CLIP for text and speech codes).

Parameter names, constructor arguments and ``forward`` are the original's, so the released ``clvp2.pth`` loads with
``strict=True``. Two things make inference faster without changing a score:
  * ``score(text[1, T], speech[B, S])`` encodes the text once and compares it with every candidate (the pipeline's
    call, which the original makes with the text repeated B times); ``forward`` does the same in eval mode when every
    row of ``text`` is identical;
  * at inference the original's all-true masks are dropped (they change nothing), so attention runs unmasked through
    ``scaled_dot_product_attention``.
Note that padding *does* change a score: at inference the original attends to and averages over every position, so
codes must be padded exactly as the original pipeline pads them to reproduce its numbers.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.transformer import Transformer
from tortoise.models.xtransformers import CheckpointedXTransformerEncoder, Encoder


def exists(val):
    return val is not None


def masked_mean(t, mask, dim=1):
    """Mean of ``t`` (B, N, D) over the positions where ``mask`` (B, N) is True."""
    t = t.masked_fill(~mask[:, :, None], 0.0)
    return t.sum(dim=dim) / mask.sum(dim=dim)[..., None]


# On CPU the encoders run over at most this many tokens at a time: every activation then stays below glibc's largest
# mmap threshold (32 MiB), so its memory is reused instead of being returned to the OS and page-faulted back on every
# layer; matmuls of 2048 rows still run at full speed. Other devices take the whole batch at once.
CPU_CHUNK_TOKENS = 2048


def _rows_per_chunk(tokens):
    """How many rows of ``tokens`` (B, N) to encode at once."""
    if tokens.device.type != "cpu":
        return tokens.shape[0]
    return max(1, CPU_CHUNK_TOKENS // max(1, tokens.shape[1]))


def _xformer_encoder(dim, depth, heads):
    return CheckpointedXTransformerEncoder(
        needs_permute=False, exit_permute=False, max_seq_len=-1,
        attn_layers=Encoder(dim=dim, depth=depth, heads=heads, ff_dropout=0.1, ff_mult=2, attn_dropout=0.1,
                            use_rmsnorm=True, ff_glu=True, rotary_pos_emb=True))


class CLVP(nn.Module):
    """CLIP retrofitted to compare tokenized text with the speech codes of a candidate utterance.

    Scores are ``exp(temperature) * cos(text_latent, speech_latent)``; latents are the mean of the encoder outputs
    over all positions (at inference) projected to ``dim_latent``.
    """

    def __init__(self, *, dim_text=512, dim_speech=512, dim_latent=512, num_text_tokens=256, text_enc_depth=6,
                 text_seq_len=120, text_heads=8, num_speech_tokens=8192, speech_enc_depth=6, speech_heads=8,
                 speech_seq_len=250, text_mask_percentage=0, voice_mask_percentage=0, wav_token_compression=1024,
                 use_xformers=False):
        super().__init__()
        self.text_emb = nn.Embedding(num_text_tokens, dim_text)
        self.to_text_latent = nn.Linear(dim_text, dim_latent, bias=False)
        self.speech_emb = nn.Embedding(num_speech_tokens, dim_speech)
        self.to_speech_latent = nn.Linear(dim_speech, dim_latent, bias=False)
        if use_xformers:
            self.text_transformer = _xformer_encoder(dim_text, text_enc_depth, text_heads)
            self.speech_transformer = _xformer_encoder(dim_speech, speech_enc_depth, speech_heads)
        else:
            self.text_transformer = Transformer(causal=False, seq_len=text_seq_len, dim=dim_text,
                                                depth=text_enc_depth, heads=text_heads)
            self.speech_transformer = Transformer(causal=False, seq_len=speech_seq_len, dim=dim_speech,
                                                  depth=speech_enc_depth, heads=speech_heads)
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.text_mask_percentage = text_mask_percentage
        self.voice_mask_percentage = voice_mask_percentage
        self.wav_token_compression = wav_token_compression
        self.xformers = use_xformers
        if not use_xformers:
            self.text_pos_emb = nn.Embedding(text_seq_len, dim_text)
            self.speech_pos_emb = nn.Embedding(num_speech_tokens, dim_speech)

    # -- encoders -------------------------------------------------------------------------------------------------

    def _training_mask(self, tokens, percentage):
        """Random token dropout used in training only; None (= attend to everything) at inference."""
        if not self.training:
            return None
        return torch.rand_like(tokens.float()) > percentage

    def _encode(self, tokens, emb, pos_emb, transformer, to_latent, mask):
        """tokens (B, N) -> unit-length latents (B, dim_latent), encoded in row chunks (see ``_rows_per_chunk``)."""
        rows = _rows_per_chunk(tokens)
        if tokens.shape[0] > rows:
            return torch.cat([self._encode(tokens[i:i + rows], emb, pos_emb, transformer, to_latent,
                                           None if mask is None else mask[i:i + rows])
                              for i in range(0, tokens.shape[0], rows)])
        h = emb(tokens)  # (B, N, D)
        if not self.xformers:
            h = h + pos_emb(torch.arange(tokens.shape[1], device=tokens.device))
        h = transformer(h, mask=mask)
        pooled = h.mean(dim=1) if mask is None else masked_mean(h, mask, dim=1)
        return F.normalize(to_latent(pooled), p=2, dim=-1)

    def encode_text(self, text, mask=None):
        """Text tokens (B, T) -> unit-length text latents (B, dim_latent)."""
        return self._encode(text, self.text_emb, getattr(self, "text_pos_emb", None), self.text_transformer,
                            self.to_text_latent, mask)

    def encode_speech(self, speech_tokens, mask=None):
        """Speech codes (B, S) -> unit-length speech latents (B, dim_latent)."""
        return self._encode(speech_tokens, self.speech_emb, getattr(self, "speech_pos_emb", None),
                            self.speech_transformer, self.to_speech_latent, mask)

    # -- public API -----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, text_tokens, speech_tokens):
        """Similarity of one text (1, T) with each of B candidates (B, S) -> (B,); equals
        ``forward(text_tokens.repeat(B, 1), speech_tokens)`` in eval mode, with the text encoded once."""
        if text_tokens.dim() == 1:
            text_tokens = text_tokens[None]
        if text_tokens.shape[0] != 1:
            raise ValueError(f"score() takes one text of shape (1, T), got {tuple(text_tokens.shape)}; "
                             f"call forward() to pair several texts with several candidates")
        text_latent = self.encode_text(text_tokens)  # (1, L)
        speech_latents = self.encode_speech(speech_tokens)  # (B, L)
        return (speech_latents @ text_latent[0]) * self.temperature.exp()

    def forward(self, text, speech_tokens, return_loss=False):
        """text (B, T), speech_tokens (B, S) -> similarities (B,), or the symmetric contrastive loss."""
        b = text.shape[0]
        text_mask = self._training_mask(text, self.text_mask_percentage)
        voice_mask = self._training_mask(speech_tokens, self.voice_mask_percentage)
        if text_mask is None and b > 1 and torch.equal(text, text[:1].expand_as(text)):
            text_latents = self.encode_text(text[:1]).expand(b, -1)  # one text repeated: encode it once
        else:
            text_latents = self.encode_text(text, text_mask)
        speech_latents = self.encode_speech(speech_tokens, voice_mask)
        temp = self.temperature.exp()
        if not return_loss:
            return (text_latents * speech_latents).sum(dim=-1) * temp
        sim = text_latents @ speech_latents.t() * temp  # (B, B)
        labels = torch.arange(b, device=text.device)
        return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2
