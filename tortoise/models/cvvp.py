"""CVVP: contrastive scoring of speech-code candidates against the voice's conditioning mel (voice similarity).

Parameter names, constructor arguments and ``forward`` are the original's, so the released ``cvvp.pth`` loads with
``strict=True``. Each side is an x-transformers encoder (rotary, RMSNorm, GLU) followed by a 1x1 conv, an attention
block and a 1x1 conv, averaged over time.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.arch_util import AttentionBlock
from tortoise.models.xtransformers import ContinuousTransformerWrapper, Encoder


def exists(val):
    return val is not None


def masked_mean(t, mask):
    """Mean of ``t`` (B, N, D) over time where ``mask`` (B, N, D) is True."""
    t = t.masked_fill(~mask, 0.0)
    return t.sum(dim=1) / mask.sum(dim=1)


class CollapsingTransformer(nn.Module):
    """Encoder (B, N, model_dim) -> (B, output_dims): transformer, conv + attention + conv, mean over time."""

    def __init__(self, model_dim, output_dims, heads, dropout, depth, mask_percentage=0, **encoder_kwargs):
        super().__init__()
        self.transformer = ContinuousTransformerWrapper(
            max_seq_len=-1, use_pos_emb=False,
            attn_layers=Encoder(dim=model_dim, depth=depth, heads=heads, ff_dropout=dropout, ff_mult=1,
                                attn_dropout=dropout, use_rmsnorm=True, ff_glu=True, rotary_pos_emb=True,
                                **encoder_kwargs))
        self.pre_combiner = nn.Sequential(nn.Conv1d(model_dim, output_dims, 1),
                                          AttentionBlock(output_dims, num_heads=heads, do_checkpoint=False),
                                          nn.Conv1d(output_dims, output_dims, 1))
        self.mask_percentage = mask_percentage

    def forward(self, x, **transformer_kwargs):
        h = self.transformer(x, **transformer_kwargs)  # (B, N, model_dim)
        h = self.pre_combiner(h.permute(0, 2, 1)).permute(0, 2, 1)  # (B, N, output_dims)
        if not self.training:
            return h.mean(dim=1)
        return masked_mean(h, torch.rand_like(h.float()) > self.mask_percentage)


class ConvFormatEmbedding(nn.Module):
    """Token embedding returned channels-mid: (B, N) -> (B, D, N)."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.emb = nn.Embedding(*args, **kwargs)

    def forward(self, x):
        return self.emb(x).permute(0, 2, 1)


class CVVP(nn.Module):
    def __init__(self, model_dim=512, transformer_heads=8, dropout=0.1, conditioning_enc_depth=8,
                 cond_mask_percentage=0, mel_channels=80, mel_codes=None, speech_enc_depth=8,
                 speech_mask_percentage=0, latent_multiplier=1):
        super().__init__()
        latent_dim = latent_multiplier * model_dim
        self.temperature = nn.Parameter(torch.tensor(1.0))
        self.cond_emb = nn.Sequential(nn.Conv1d(mel_channels, model_dim // 2, kernel_size=5, stride=2, padding=2),
                                      nn.Conv1d(model_dim // 2, model_dim, kernel_size=3, stride=2, padding=1))
        self.conditioning_transformer = CollapsingTransformer(model_dim, model_dim, transformer_heads, dropout,
                                                              conditioning_enc_depth, cond_mask_percentage)
        self.to_conditioning_latent = nn.Linear(latent_dim, latent_dim, bias=False)
        if mel_codes is None:
            self.speech_emb = nn.Conv1d(mel_channels, model_dim, kernel_size=5, padding=2)
        else:
            self.speech_emb = ConvFormatEmbedding(mel_codes, model_dim)
        self.speech_transformer = CollapsingTransformer(model_dim, latent_dim, transformer_heads, dropout,
                                                        speech_enc_depth, speech_mask_percentage)
        self.to_speech_latent = nn.Linear(latent_dim, latent_dim, bias=False)

    def get_grad_norm_parameter_groups(self):
        return {"conditioning": list(self.conditioning_transformer.parameters()),
                "speech": list(self.speech_transformer.parameters())}

    def encode_conditioning(self, mel_cond):
        """Conditioning mel (B, mel_channels, T) -> unit-length latents (B, latent_dim)."""
        h = self.cond_emb(mel_cond).permute(0, 2, 1)  # (B, T/4, model_dim)
        return F.normalize(self.to_conditioning_latent(self.conditioning_transformer(h)), p=2, dim=-1)

    def encode_speech(self, mel_input):
        """Speech codes (B, S) (or a mel (B, mel_channels, S) when built without mel_codes) -> (B, latent_dim)."""
        h = self.speech_emb(mel_input).permute(0, 2, 1)  # (B, S, model_dim)
        return F.normalize(self.to_speech_latent(self.speech_transformer(h)), p=2, dim=-1)

    @torch.no_grad()
    def score(self, mel_cond, speech_tokens):
        """Similarity of one conditioning mel (1, C, T) with each of B candidates -> (B,); equals
        ``forward(mel_cond.repeat(B, 1, 1), speech_tokens)`` in eval mode, with the mel encoded once."""
        if mel_cond.dim() == 2:
            mel_cond = mel_cond[None]
        if mel_cond.shape[0] != 1:
            raise ValueError(f"score() takes one conditioning mel of shape (1, C, T), got {tuple(mel_cond.shape)}; "
                             f"call forward() to pair several mels with several candidates")
        return (self.encode_speech(speech_tokens) @ self.encode_conditioning(mel_cond)[0]) * self.temperature.exp()

    def forward(self, mel_cond, mel_input, return_loss=False):
        """mel_cond (B, C, T), mel_input (B, S) codes -> similarities (B,), or the symmetric contrastive loss."""
        b = mel_cond.shape[0]
        if not self.training and b > 1 and torch.equal(mel_cond, mel_cond[:1].expand_as(mel_cond)):
            cond_latents = self.encode_conditioning(mel_cond[:1]).expand(b, -1)  # one mel repeated: encode once
        else:
            cond_latents = self.encode_conditioning(mel_cond)
        speech_latents = self.encode_speech(mel_input)
        temp = self.temperature.exp()
        if not return_loss:
            return (cond_latents * speech_latents).sum(dim=-1) * temp
        sim = cond_latents @ speech_latents.t() * temp
        labels = torch.arange(b, device=mel_input.device)
        return (F.cross_entropy(sim, labels) + F.cross_entropy(sim.t(), labels)) / 2
