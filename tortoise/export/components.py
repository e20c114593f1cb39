"""The exportable components: which network each comes from, its graph form, inputs, outputs, axes and reference.

Each component knows
- ``network``: the checkpoint it is exported from (a `tortoise.utils.checkpoints` name, or a BigVGAN vocoder name);
- ``form(net)``: its export form (`tortoise.export.graphs`);
- ``inputs(net, shapes, generator)``: seeded example inputs, in graph-input order;
- ``axes(net)``: which input axes are dynamic with ``--dynamic_axes`` (named, so equal names are equal sizes);
- ``outputs(net)``: graph output names;
- ``reference(net, inputs)``: the outputs of the torch network's own method (what the graph is verified against).
"""
from dataclasses import dataclass, replace

import torch

import tortoise.export.graphs as graphs
from tortoise.utils.diffusion import output_length

AR_COND_FRAMES = 517         # mel frames of a 132,300-sample AR conditioning clip (22.05 kHz, hop 256, centred)
DIFFUSION_COND_FRAMES = 401  # mel frames of a 102,400-sample diffusion conditioning clip (24 kHz, hop 256)


@dataclass(frozen=True)
class Shapes:
    """Example sizes: the graph's only sizes with fixed shapes, a trace example with ``--dynamic_axes``."""
    batch: int = 1
    text_tokens: int = 32     # text tokens (as given to the AR model, before its start/stop tokens)
    codes: int = 64           # AR codes: the latent pass, CLVP speech, diffusion latents, HiFi-GAN latents
    clips: int = 1            # conditioning clips per voice
    cache: int = 0            # past positions in the decode step's KV cache (0: the prompt, 1 + text + 2 + 1)
    cond_frames: int = 0      # conditioning mel frames (0: the pipeline's, 517 for the AR model, 401 for diffusion)

    @property
    def frames(self) -> int:  # diffusion / vocoder mel frames for `codes` codes
        return output_length(self.codes)

    @property
    def past(self) -> int:
        return self.cache or self.text_tokens + 4

    def ar_cond_frames(self) -> int:
        return self.cond_frames or AR_COND_FRAMES

    def diffusion_cond_frames(self) -> int:
        return self.cond_frames or DIFFUSION_COND_FRAMES

    def varied(self) -> "Shapes":
        """Other sizes for checking that a dynamic graph really is (every dynamic axis changed, none of them 1: an
        axis of size 1 is specialised by the tracer)."""
        return replace(self, batch=self.batch + 1, text_tokens=self.text_tokens + 5, codes=self.codes + 7,
                       clips=self.clips + 1, cache=self.past + 3, cond_frames=self.ar_cond_frames() - 13)

    def traceable(self) -> "Shapes":
        """The example for a dynamic export: axes of size 1 raised to 2 (the tracer would fix them at 1)."""
        return replace(self, batch=max(self.batch, 2), clips=max(self.clips, 2))


def _rand(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def _ints(gen, high, *shape):
    return torch.randint(0, high, shape, generator=gen)


@dataclass(frozen=True)
class Component:
    name: str
    network: str
    description: str

    def form(self, net):
        raise NotImplementedError

    def inputs(self, net, shapes, gen):
        raise NotImplementedError

    def axes(self, net):
        raise NotImplementedError

    def outputs(self, net):
        raise NotImplementedError

    def reference(self, net, inputs):
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------
class ArConditioningComponent(Component):
    def form(self, net):
        return graphs.ArConditioning(net)

    def inputs(self, net, s, gen):
        return {"mels": _rand(gen, s.batch, s.clips, 80, s.ar_cond_frames())}

    def axes(self, net):
        return {"mels": {0: "batch", 1: "clips", 3: "cond_frames"}}

    def outputs(self, net):
        return ["latent"]

    def reference(self, net, x):
        return [net.get_conditioning(x["mels"])]


def _ar_prompt_inputs(net, s, gen, batch):
    return {"cond_latent": _rand(gen, batch, net.model_dim),
            "text_tokens": _ints(gen, net.number_text_tokens, batch, s.text_tokens)}


class ArPrefillComponent(Component):
    def form(self, net):
        return graphs.ArPrefill(net)

    def inputs(self, net, s, gen):
        x = _ar_prompt_inputs(net, s, gen, s.batch)
        x["mel_tokens"] = torch.full((s.batch, 1), net.start_mel_token, dtype=torch.long)
        return x

    def axes(self, net):
        return {"cond_latent": {0: "batch"}, "text_tokens": {0: "batch", 1: "text"}, "mel_tokens": {0: "batch"}}

    def outputs(self, net):
        return ["logits", "hidden"] + graphs.cache_names(net.layers, "present")

    def reference(self, net, x):
        prompt = net.compute_embeddings(x["cond_latent"], x["text_tokens"])
        mel = x["mel_tokens"]
        prompt = torch.cat([prompt, net.mel_embedding(mel) + net.mel_pos_embedding(mel)], dim=1)
        cache = net.gpt.new_cache(prompt.shape[0], prompt.shape[1], prompt, prompt.dtype)  # the graph's own dtype
        hidden = net.final_norm(net.gpt.prefill(prompt, cache)[:, -1])
        return [net.mel_head(hidden), hidden] + cache.tensors


class ArDecodeComponent(Component):
    def form(self, net):
        return graphs.ArDecode(net)

    def inputs(self, net, s, gen):
        cfg = net.gpt.config
        x = {"tokens": _ints(gen, net.number_mel_codes, s.batch),
             "position": torch.tensor([min(5, net.mel_pos_embedding.emb.num_embeddings - 1)])}
        for name in graphs.cache_names(cfg.n_layer, "past"):
            x[name] = _rand(gen, s.batch, cfg.n_head, s.past, cfg.head_dim)
        return x

    def axes(self, net):
        axes = {"tokens": {0: "batch"}, "position": {}}
        for name in graphs.cache_names(net.gpt.config.n_layer, "past"):
            axes[name] = {0: "batch", 2: "past"}
        return axes

    def outputs(self, net):
        return ["logits", "hidden"] + graphs.cache_names(net.layers, "present")

    def reference(self, net, x):
        past = [t for name, t in x.items() if name.startswith("past.")]
        b, _, t, _ = past[0].shape
        cache = net.gpt.new_cache(b, t + 1, past[0], past[0].dtype)
        for dst, src in zip(cache.tensors, past):
            dst[:, :, :t] = src
        step = net._mel_step_embedding(x["tokens"], int(x["position"][0]))
        hidden = net.final_norm(net.gpt.step(step, cache, t)[:, 0])
        return [net.mel_head(hidden), hidden] + cache.tensors


class ArLatentComponent(Component):
    def form(self, net):
        return graphs.ArLatent(net)

    def inputs(self, net, s, gen):
        x = _ar_prompt_inputs(net, s, gen, s.batch)
        x["codes"] = _ints(gen, net.stop_mel_token, s.batch, s.codes)
        return x

    def axes(self, net):
        return {"cond_latent": {0: "batch"}, "text_tokens": {0: "batch", 1: "text"}, "codes": {0: "batch", 1: "codes"}}

    def outputs(self, net):
        return ["latents"]

    def reference(self, net, x):
        text, codes = x["text_tokens"], x["codes"]
        return [net(x["cond_latent"], text, torch.tensor([text.shape[1]]), codes,
                    torch.tensor([codes.shape[1] * net.mel_length_compression]), return_latent=True,
                    clip_inputs=False)]


# ---------------------------------------------------------------------------------------------------------------
class ClvpTextComponent(Component):
    def form(self, net):
        return graphs.ClvpText(net)

    def inputs(self, net, s, gen):
        return {"text_tokens": _ints(gen, net.text_emb.num_embeddings, s.batch, s.text_tokens)}

    def axes(self, net):
        return {"text_tokens": {0: "batch", 1: "text"}}

    def outputs(self, net):
        return ["text_latent", "scale"]

    def reference(self, net, x):
        return [net.encode_text(x["text_tokens"]), net.temperature.exp().reshape(1)]


class ClvpSpeechComponent(Component):
    def form(self, net):
        return graphs.ClvpSpeech(net)

    def inputs(self, net, s, gen):
        return {"codes": _ints(gen, net.speech_emb.num_embeddings, s.batch, s.codes)}

    def axes(self, net):
        return {"codes": {0: "batch", 1: "codes"}}

    def outputs(self, net):
        return ["speech_latent"]

    def reference(self, net, x):
        return [net.encode_speech(x["codes"])]


# ---------------------------------------------------------------------------------------------------------------
class DiffusionConditioningComponent(Component):
    def form(self, net):
        return graphs.DiffusionConditioning(net)

    def inputs(self, net, s, gen):
        return {"clips": _rand(gen, s.batch, s.clips, net.in_channels, s.diffusion_cond_frames())}

    def axes(self, net):
        return {"clips": {0: "batch", 1: "clips", 3: "cond_frames"}}

    def outputs(self, net):
        return ["cond_latent"]

    def reference(self, net, x):
        return [net.get_conditioning(x["clips"])]


class DiffusionEmbeddingComponent(Component):
    def form(self, net):
        return graphs.DiffusionEmbedding(net)

    def inputs(self, net, s, gen):
        latent_dim = net.latent_conditioner[0].in_channels
        return {"latents": _rand(gen, s.batch, s.codes, latent_dim),
                "cond_latent": _rand(gen, s.batch, 2 * net.model_channels)}

    def axes(self, net):
        return {"latents": {0: "batch", 1: "codes"}, "cond_latent": {0: "batch"}}

    def outputs(self, net):
        return ["code_emb"]

    def reference(self, net, x):
        lat = x["latents"]
        return [net.timestep_independent(lat, x["cond_latent"], output_length(lat.shape[1]), False)]


class DiffusionStepComponent(Component):
    def form(self, net):
        return graphs.DiffusionStep(net)

    def inputs(self, net, s, gen):
        return {"x": _rand(gen, s.batch, net.in_channels, s.frames),
                "timesteps": torch.rand(s.batch, generator=gen) * 1000,
                "code_emb": _rand(gen, s.batch, net.model_channels, s.frames)}

    def axes(self, net):
        return {"x": {0: "batch", 2: "frames"}, "timesteps": {0: "batch"}, "code_emb": {0: "batch", 2: "frames"}}

    def outputs(self, net):
        return ["out", "out_uncond"]

    def reference(self, net, x):
        return list(net.forward_guided(x["x"], x["timesteps"], precomputed_aligned_embeddings=x["code_emb"]))


class DiffusionStepUnguidedComponent(DiffusionStepComponent):
    def form(self, net):
        return graphs.DiffusionStepUnguided(net)

    def outputs(self, net):
        return ["out"]

    def reference(self, net, x):
        return [net(x["x"], x["timesteps"], precomputed_aligned_embeddings=x["code_emb"])]


# ---------------------------------------------------------------------------------------------------------------
def _log_mel(gen, *shape):
    return _rand(gen, *shape, scale=2.0) - 5.0  # around the level of a real log-mel


class UnivNetComponent(Component):
    def form(self, net):
        return graphs.UnivNet(net)

    def inputs(self, net, s, gen):
        return {"mel": _log_mel(gen, s.batch, net.mel_channel, s.frames),
                "z": _rand(gen, s.batch, net.noise_dim, s.frames + graphs.INFERENCE_PAD_FRAMES)}

    def axes(self, net):
        return {"mel": {0: "batch", 2: "frames"}, "z": {0: "batch", 2: "frames+10"}}

    def outputs(self, net):
        return ["wav"]

    def reference(self, net, x):
        return [net.inference(x["mel"], x["z"])]


class BigVGANComponent(Component):
    def form(self, net):
        return graphs.BigVGAN(net)

    def inputs(self, net, s, gen):
        return {"mel": _log_mel(gen, s.batch, net.h["num_mels"], s.frames)}

    def axes(self, net):
        return {"mel": {0: "batch", 2: "frames"}}

    def outputs(self, net):
        return ["wav"]

    def reference(self, net, x):
        return [net(x["mel"]).clamp(min=-1, max=1)]


class HifiganComponent(Component):
    def form(self, net):
        return graphs.Hifigan(net)

    def inputs(self, net, s, gen):
        channels = net.conv_pre.in_channels
        return {"latents": _rand(gen, s.batch, s.codes, channels),
                "cond_latent": _rand(gen, s.batch, net.cond_layer.in_channels)}

    def axes(self, net):
        return {"latents": {0: "batch", 1: "codes"}, "cond_latent": {0: "batch"}}

    def outputs(self, net):
        return ["wav"]

    def reference(self, net, x):
        return [net.inference(x["latents"], x["cond_latent"])]


COMPONENTS = {c.name: c for c in (
    ArConditioningComponent("ar_conditioning", "autoregressive", "AR conditioning encoder (voice mels -> latent)"),
    ArPrefillComponent("ar_prefill", "autoregressive", "GPT-2 prefill: prompt -> logits, hidden, KV cache"),
    ArDecodeComponent("ar_decode", "autoregressive", "GPT-2 decode step: token, position, KV cache -> same"),
    ArLatentComponent("ar_latent", "autoregressive", "AR latent pass (codes -> final-normed hidden states)"),
    ClvpTextComponent("clvp_text", "clvp", "CLVP text encoder (+ score scale)"),
    ClvpSpeechComponent("clvp_speech", "clvp", "CLVP speech encoder"),
    DiffusionConditioningComponent("diffusion_conditioning", "diffusion", "diffusion voice latent from mels"),
    DiffusionEmbeddingComponent("diffusion_embedding", "diffusion", "diffusion timestep-independent code embedding"),
    DiffusionStepComponent("diffusion_step", "diffusion", "guided diffusion step (cond + uncond in one batch)"),
    DiffusionStepUnguidedComponent("diffusion_step_unguided", "diffusion", "unguided diffusion step (cond only)"),
    UnivNetComponent("univnet", "vocoder", "UnivNet vocoder (mel + noise -> wav)"),
    BigVGANComponent("bigvgan_base", "bigvgan_base", "BigVGAN base vocoder (mel -> wav)"),
    BigVGANComponent("bigvgan", "bigvgan", "BigVGAN vocoder (mel -> wav)"),
    HifiganComponent("hifigan", "hifidecoder", "HiFi-GAN decoder (AR latents + voice latent -> wav)"),
)}

# Which components each network's backend object uses.
NETWORK_COMPONENTS = {
    "autoregressive": ("ar_conditioning", "ar_prefill", "ar_decode", "ar_latent"),
    "clvp": ("clvp_text", "clvp_speech"),
    "diffusion": ("diffusion_conditioning", "diffusion_embedding", "diffusion_step", "diffusion_step_unguided"),
    "vocoder": ("univnet",),
    "bigvgan_base": ("bigvgan_base",),
    "bigvgan": ("bigvgan",),
    "hifidecoder": ("hifigan",),
}
