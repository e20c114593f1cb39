"""The exportable components: which network each comes from, its graph form, inputs, outputs, axes and reference.

Each component knows
- ``network``: the checkpoint it is exported from (a `tortoise.utils.checkpoints` name, or a BigVGAN vocoder name);
- ``form(net)``: its export form (`tortoise.export.graphs`), traced by torch.export; or, for a ``built`` component,
  ``build(net, fmt, path, half=, int8=)``, which writes the graph op by op (`tortoise.export.transformer`);
- ``inputs(net, shapes, generator)``: seeded example inputs, in graph-input order;
- ``axes(net)``: which input axes are dynamic with ``--dynamic_axes`` (named, so equal names are equal sizes);
- ``outputs(net)``: graph output names;
- ``reference(net, inputs)``: the outputs of the torch network's own method (what the graph is verified against).
"""
import copy
from dataclasses import dataclass, replace

import torch

import tortoise.export.graphs as graphs
import tortoise.export.transformer as transformer
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
    cond_frames: int = 0      # conditioning mel frames (0: the pipeline's, 517 for the AR model, 401 for diffusion)

    @property
    def frames(self) -> int:  # diffusion / vocoder mel frames for `codes` codes
        return output_length(self.codes)

    def ar_cond_frames(self) -> int:
        return self.cond_frames or AR_COND_FRAMES

    def diffusion_cond_frames(self) -> int:
        return self.cond_frames or DIFFUSION_COND_FRAMES

    def varied(self) -> "Shapes":
        """Other sizes for checking that a dynamic graph really is (every dynamic axis changed, none of them 1: an
        axis of size 1 is specialised by the tracer)."""
        return replace(self, batch=self.batch + 1, text_tokens=self.text_tokens + 5, codes=self.codes + 7,
                       clips=self.clips + 1, cond_frames=self.ar_cond_frames() - 13)

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


STEPS = 3  # decode steps in the AR transformer's verification


class ArTransformerComponent(Component):
    """The AR model's GPT-2 for every pass (`tortoise.export.transformer`): built op by op, not traced. Verified as
    the pipeline uses it: a prompt of ``batch`` rows, its cache broadcast to twice as many rows, three decode steps,
    and a latent pass — each against `UnifiedVoice`'s own prefill, step and ``forward(return_latent=True)``."""

    built = True

    def build(self, net, fmt, path, *, half=False, int8=False):
        if fmt == "onnx":
            transformer.build_onnx(net, path, half=half)
        else:
            transformer.build_openvino(net, path, int8=int8)

    def inputs(self, net, s, gen):
        x = _ar_prompt_inputs(net, s, gen, s.batch)
        x["step_tokens"] = _ints(gen, net.number_mel_codes, 2 * s.batch, STEPS)
        latent = _ar_prompt_inputs(net, s, gen, s.batch)
        x["latent_cond"], x["latent_text"] = latent["cond_latent"], latent["text_tokens"]
        x["codes"] = _ints(gen, net.stop_mel_token, s.batch, s.codes)
        return x

    def axes(self, net):  # the built graph is always dynamic
        return {}

    def outputs(self, net):
        return ["prompt_logits", "prompt_hidden", "step_logits", "step_hidden", "latents"]

    def reference(self, net, x):
        if next(net.parameters()).dtype != torch.float32:  # a half graph: against its rounded weights in float32
            net = copy.deepcopy(net).float()
            x = {k: v.float() if v.is_floating_point() else v for k, v in x.items()}
        cond, text, steps = x["cond_latent"], x["text_tokens"], x["step_tokens"]
        u, rows = cond.shape[0], steps.shape[0]
        start = torch.full((u, 1), net.start_mel_token, dtype=torch.long, device=cond.device)
        prompt = net.prompt_embeddings(cond, text, start)
        n = prompt.shape[1]
        cache = net.gpt.new_cache(rows, n + STEPS, prompt, prompt.dtype)
        hidden = net.gpt.prefill(prompt[torch.arange(rows) % u], cache)[:, -1]
        prompt_hidden, prompt_logits = net._final(hidden[:u])
        step_hidden, step_logits = [], []
        for j in range(STEPS):
            h = net.gpt.step(net._mel_step_embedding(steps[:, j], j + 1), cache, n + j)[:, 0]
            latent, logits = net._final(h)
            step_hidden.append(latent)
            step_logits.append(logits)
        text2, codes = x["latent_text"], x["codes"]
        latents = net(x["latent_cond"], text2, torch.tensor([text2.shape[1]]), codes,
                      torch.tensor([codes.shape[1] * net.mel_length_compression]), return_latent=True,
                      clip_inputs=False)
        return [prompt_logits, prompt_hidden, torch.stack(step_logits, 1), torch.stack(step_hidden, 1), latents]


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
    ArTransformerComponent("ar_transformer", "autoregressive",
                           "GPT-2 for the prompt, the decode steps (KV cache in place) and the latent pass"),
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
    "autoregressive": ("ar_conditioning", "ar_transformer"),
    "clvp": ("clvp_text", "clvp_speech"),
    "diffusion": ("diffusion_conditioning", "diffusion_embedding", "diffusion_step", "diffusion_step_unguided"),
    "vocoder": ("univnet",),
    "bigvgan_base": ("bigvgan_base",),
    "bigvgan": ("bigvgan",),
    "hifidecoder": ("hifigan",),
}
