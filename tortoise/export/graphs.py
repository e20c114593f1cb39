"""Export forms of Tortoise's networks: one ``nn.Module`` per exported graph, computing exactly the call the pipeline
makes on the torch network, written with ops that ``torch.export`` traces into a shape-generic graph.

Why forms and not the networks themselves: the torch networks run their CPU hot loops with tricks a graph cannot
hold — per-batch-item ``addmm(out=...)`` loops, strided (Hankel) views of the attention bias, chunked activations
chosen by the input length. Those either fix the batch size and length in the trace or
do not exist in ONNX. Each form below reuses the network's own submodules and parameters and takes the standard
formulation of the same maths (``AttentionBlock.forward``, ``nn.ConvTranspose1d``, the location-variable convolution
as batched matmuls per tap). Every graph is verified against the torch network's
own method on seeded inputs before it is kept (`tortoise.export.exporter`). The AR model's GPT-2 is not traced at
all: `tortoise.export.transformer` builds it op by op, for its KV cache written in place.

Shapes: B batch, t text tokens, m mel tokens / codes, d AR model width,
C diffusion width, F mel frames.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from tortoise.models.diffusion_decoder import DiffusionLayer, _group_norm, timestep_embedding
from tortoise.models.vocoder import INFERENCE_PAD_FRAMES, SILENCE_MEL
from tortoise.utils.diffusion import output_length

# Bumped whenever a form changes what its graph computes (part of every graph's fingerprint).
GRAPH_FORMAT = 1


# ---------------------------------------------------------------------------------------------------------------
# Autoregressive model (UnifiedVoice + its GPT-2)
# ---------------------------------------------------------------------------------------------------------------
class ArConditioning(nn.Module):
    """``UnifiedVoice.get_conditioning``: mels (B, N, 80, S) -> AR conditioning latent (B, d), the mean over the N
    clips (all clips encoded as one batch of B*N)."""

    def __init__(self, ar):
        super().__init__()
        self.encoder = ar.conditioning_encoder

    def forward(self, mels):
        b, n = mels.shape[:2]
        latents = self.encoder(mels.flatten(0, 1))  # (B*N, d)
        return latents.unflatten(0, (b, n)).mean(dim=1)


# ---------------------------------------------------------------------------------------------------------------
# CLVP
# ---------------------------------------------------------------------------------------------------------------
def clvp_encode(clvp, tokens, emb, pos_emb, transformer, to_latent):
    """`CLVP._encode` at inference, in one piece (the torch network encodes long batches in row chunks on CPU to
    spare the allocator; each row is independent, so the result is the same): (B, N) -> unit latents (B, L)."""
    h = emb(tokens)
    if pos_emb is not None:
        h = h + pos_emb(torch.arange(tokens.shape[1], device=tokens.device))
    h = transformer(h, mask=None)
    return F.normalize(to_latent(h.mean(dim=1)), p=2, dim=-1)


def functional_rotary(clvp):
    """The export copy's attention rotates q, k, v functionally (slices and a concatenation): the in-place rotation
    traces into ScatterND writes and transposes that made ONNX Runtime 7x slower than torch on CLVP."""
    from tortoise.models.xtransformers import Attention
    for module in clvp.modules():
        if isinstance(module, Attention):
            module.inplace_rotary = False  # an instance attribute of this export copy only
    return clvp


class ClvpText(nn.Module):
    """``CLVP.encode_text``: text tokens (B, t) -> unit text latents (B, L), and the score scale exp(temperature)
    (1,), so that ``score = (speech_latent . text_latent) * scale`` as `CLVP.forward` computes it."""

    def __init__(self, clvp):
        super().__init__()
        self.clvp = functional_rotary(clvp)

    def forward(self, text_tokens):
        c = self.clvp
        latents = clvp_encode(c, text_tokens, c.text_emb, getattr(c, "text_pos_emb", None), c.text_transformer,
                              c.to_text_latent)
        return latents, c.temperature.exp().reshape(1)


class ClvpSpeech(nn.Module):
    """``CLVP.encode_speech``: codes (B, m) -> unit speech latents (B, L)."""

    def __init__(self, clvp):
        super().__init__()
        self.clvp = functional_rotary(clvp)

    def forward(self, codes):
        c = self.clvp
        return clvp_encode(c, codes, c.speech_emb, getattr(c, "speech_pos_emb", None), c.speech_transformer,
                           c.to_speech_latent)


# ---------------------------------------------------------------------------------------------------------------
# Diffusion decoder
# ---------------------------------------------------------------------------------------------------------------
class DiffusionConditioning(nn.Module):
    """``DiffusionTts.get_conditioning``: mel clips (B, K, 100, L) -> diffusion voice latent (B, 2C)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, clips):
        b, k = clips.shape[:2]
        h = self.model.contextual_embedder(clips.flatten(0, 1))  # (B*K, 2C, L/4): AttentionBlock.forward
        return h.unflatten(0, (b, k)).mean(dim=(1, 3))


class DiffusionEmbedding(nn.Module):
    """``DiffusionTts.timestep_independent(latents, cond, output_length(m), False)``: AR latents (B, m, d) and the
    voice latent (B, 2C) -> code embedding (B, C, F) with F = `tortoise.utils.diffusion.output_length` (m)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, latents, cond_latent):
        m = self.model
        scale, shift = torch.chunk(cond_latent, 2, dim=1)  # each (B, C)
        code = m.latent_conditioner(latents.permute(0, 2, 1))  # (B, C, m)
        code = _group_norm(m.code_norm, code) * (1 + scale.unsqueeze(-1)) + shift.unsqueeze(-1)
        return nearest_upsample(code, output_length(latents.shape[1]))


def nearest_upsample(x, size):
    """``F.interpolate(x, size=size, mode="nearest")`` along the last axis as torch's kernels compute it — frame i
    takes source frame floor(i * float32(n / size)) — written as a gather: ONNX Resize divides by the float32 ratio
    size / n instead, which picks the frame before wherever i * n / size is a whole number (e.g. frame 13 of 30
    codes upsampled to 130 frames)."""
    n = x.shape[-1]
    scale = torch.full((), n, dtype=torch.float32) / torch.full((), size, dtype=torch.float32)
    index = (torch.arange(size, dtype=torch.float32, device=x.device) * scale.to(x.device)).floor().long()
    return x.index_select(-1, index.clamp(max=n - 1))


def diffusion_trunk(m, x, timesteps, code):
    """`DiffusionTts._trunk_steps` with every attention through ``AttentionBlock.forward`` (dense relative bias):
    x (B, 100, F), timesteps (B,), code embedding (B, C, F) -> (B, 200, F)."""
    time_emb = m.time_embed(timestep_embedding(timesteps, m.model_channels))  # (B, C)
    for layer in m.conditioning_timestep_integrator:
        code = layer.attn(layer.resblk(code, time_emb))
    h = m.integrating_conv(torch.cat([m.inp_block(x), code], dim=1))
    for layer in m.layers:
        h = layer.attn(layer.resblk(h, time_emb)) if isinstance(layer, DiffusionLayer) else layer(h, time_emb)
    return m.out[2](F.silu(_group_norm(m.out[0], h)))


class DiffusionStep(nn.Module):
    """``DiffusionTts.forward_guided(x, timesteps, precomputed_aligned_embeddings=code_emb)``: noisy mels x (B, 100, F),
    timesteps (B,), code embedding (B, C, F) -> conditional and unconditional outputs (B, 200, F) each, from one
    batched pass of 2B items."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, timesteps, code_emb):
        m = self.model
        b = x.shape[0]
        uncond = m.unconditioned_embedding.expand(b, -1, x.shape[-1])
        out = diffusion_trunk(m, torch.cat([x, x]), torch.cat([timesteps, timesteps]), torch.cat([code_emb, uncond]))
        return out[:b], out[b:]


class DiffusionStepUnguided(nn.Module):
    """``DiffusionTts.forward(x, timesteps, precomputed_aligned_embeddings=code_emb)``: the unguided step (samplers
    without conditioning-free guidance) -> (B, 200, F), one pass of B items, not the guided graph's 2B."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, timesteps, code_emb):
        return diffusion_trunk(self.model, x, timesteps, code_emb)


# ---------------------------------------------------------------------------------------------------------------
# Vocoders and the HiFi-GAN decoder
# ---------------------------------------------------------------------------------------------------------------
def lvc_graph(x, kernels, bias, hop):
    """`tortoise.models.vocoder.location_variable_convolution` as batched matmuls per tap (same sums, same order):
    x (B, C_in, L*hop), kernels (B, L, K, C_out, C_in), bias (B, L, C_out) -> (B, L, C_out, hop)."""
    frames, taps = kernels.shape[1], kernels.shape[2]
    length = x.shape[2]
    pad = (taps - 1) // 2
    xp = F.pad(x, (pad, pad))
    out = bias.unsqueeze(-1)
    for k in range(taps):
        window = xp[:, :, k:k + length].unflatten(2, (frames, hop)).transpose(1, 2)  # (B, L, C_in, hop)
        out = out + kernels[:, :, k] @ window
    return out


def lvc_block(block, x, c):
    """`LVCBlock.forward` with the standard transposed convolution and the graph LVC."""
    x = block.convt_pre(x)  # (B, C, T)
    kernels, bias = block.kernel_predictor.lvc_params(c)
    channels = x.shape[1]
    for i, conv in enumerate(block.conv_blocks):
        out = lvc_graph(conv(x), kernels[:, :, i], bias[:, :, i], block.cond_hop_length)  # (B, L, 2C, hop)
        out = out.transpose(1, 2).flatten(2)  # (B, 2C, T)
        x = x + torch.sigmoid(out[:, :channels]) * torch.tanh(out[:, channels:])
    return x


class UnivNet(nn.Module):
    """``UnivNetGenerator.inference(mel, z)``: mel (B, 100, F) and noise z (B, noise_dim, F + 10) -> waveform
    (B, 1, F * 256) in [-1, 1]. The noise is an input so that it is drawn in torch, from the same random stream."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, mel, z):
        net = self.net
        silence = torch.full_like(mel[:, :, :INFERENCE_PAD_FRAMES], SILENCE_MEL)
        c = torch.cat([mel, silence], dim=2)
        h = net.conv_pre(z)
        for block in net.res_stack:
            h = lvc_block(block, h, c)
        audio = net.conv_post(h)[:, :, :mel.shape[2] * net.hop_length]
        return audio.clamp(min=-1, max=1)


class BigVGAN(nn.Module):
    """The ``Vocoder`` call for BigVGAN: mel (B, 100, F) -> waveform (B, 1, F * 256) clamped to [-1, 1], with the
    transposed convolutions as the standard op and each anti-aliased activation unchunked (the network chunks long
    signals for cache locality; every chunk's kept samples are the unchunked ones)."""

    def __init__(self, net):
        super().__init__()
        from tortoise.models.bigvgan import Activation1d
        self.net = net
        for module in net.modules():
            if isinstance(module, Activation1d):
                module.forward = module.activate  # an instance attribute of this export copy only

    def forward(self, mel):
        net = self.net
        x = net.conv_pre(mel)
        for i, stage in enumerate(net.ups):
            for up in stage:
                x = up(x)
            blocks = net.resblocks[i * net.num_kernels:(i + 1) * net.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / net.num_kernels
        x = net.conv_post(net.activation_post(x))
        x = torch.tanh(x) if net.use_tanh_at_final else x
        return x.clamp(min=-1, max=1)


class Hifigan(nn.Module):
    """``HifiganGenerator.inference(latents, cond)``: AR latents (B, m, d) and conditioning latent (B, d) ->
    waveform (B, 1, 256 * floor(floor(4 m) * 24000 / 22050)), with the standard transposed convolution."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, latents, cond_latent):
        from tortoise.models.hifigan_decoder import LRELU_SLOPE, upsample_latents
        net = self.net
        x = net.conv_pre(upsample_latents(latents)) + net.cond_layer(cond_latent.unsqueeze(-1))
        for i, up in enumerate(net.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            blocks = net.resblocks[i * net.num_kernels:(i + 1) * net.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / net.num_kernels
        return torch.tanh(net.conv_post(F.leaky_relu(x)))
