"""Per-network objects that run exported graphs and expose the calls the pipeline makes on the torch networks.

=====================  ========================================================================================
torch network          graph object and its calls (tensors in and out are torch; shapes as the torch methods)
=====================  ========================================================================================
UnifiedVoice           `AutoregressiveGraphs`: ``get_conditioning(mels)``; the decode loop's ``prefill(cond, text,
                       num_return_sequences, max_generate_length, input_tokens) -> DecodeState``, ``step(state,
                       tokens)``, ``tokens(state, sampling)``, ``decode(state, sampling, callback)``,
                       ``inference_speech(...)`` (`tortoise.models.decoding`; sampling in torch); the latent
                       pass ``latents(cond, text, codes)`` / ``__call__(..., return_latent=True, clip_inputs=False)``.
                       Underneath, one graph for all three, ``graphs.transformer()`` (`tortoise.runtimes.common.
                       Transformer`: ``prompt``, ``step`` with the KV cache in place, ``latents``), fed embeddings
                       summed in torch from its tables (`tortoise.export.transformer.Embeddings`)
CLVP                   `ClvpGraphs`: ``encode_text``, ``encode_speech``, ``score(text, codes)``, ``__call__(text,
                       codes, return_loss=False)``
DiffusionTts           `DiffusionGraphs`: ``get_conditioning``, ``timestep_independent``, ``forward_guided``,
                       ``__call__(x, t, precomputed_aligned_embeddings=..., conditioning_free=...)``
UnivNetGenerator       `UnivNetGraph`: ``inference(mel, z=None)`` (noise drawn in torch, as the network draws it)
BigVGAN (Vocoder)      `BigVGANGraph`: ``inference(mel)`` / ``__call__(mel)``
HifiganGenerator       `HifiganGraph`: ``inference(latents, cond_latent)``
=====================  ========================================================================================

Sampling never leaves torch: the graphs return logits and the decode loop draws from them with
`tortoise.utils.sampling.choose_next`, the function `UnifiedVoice` uses, so a seed draws the same random numbers.
Each object loads (and on first use exports) its graphs lazily, so the streaming path never loads the latent pass.
"""
import inspect
from pathlib import Path

import torch

from tortoise.export.exporter import ensure_exported
from tortoise.export.transformer import Embeddings
from tortoise.models.decoding import DecodeLoop, position_offset
from tortoise.models.vocoder import INFERENCE_PAD_FRAMES
from tortoise.utils import checkpoints
from tortoise.utils.diffusion import output_length


class GraphSet:
    """The graphs of one network for one backend, exported and loaded on first use."""

    def __init__(self, backend, models_dir, network, *, export_dir=None, checkpoint=None, dynamic=True,
                 verify=True, cpu_only=False):
        self.backend, self.models_dir, self.network = backend, models_dir, network
        self.export_kwargs = dict(output_dir=export_dir, dynamic=dynamic, verify=verify, cpu_only=cpu_only,
                                  checkpoint=checkpoint)
        self._runners, self._transformer = {}, None

    def path(self, component):
        return ensure_exported(component, self.models_dir, self.backend.name, half=self.backend.half_graphs,
                               int8=self.backend.int8_weights, **self.export_kwargs)

    def runner(self, component):
        if component not in self._runners:
            self._runners[component] = self.backend.runner(self.path(component))
        return self._runners[component]

    def transformer(self):
        """The AR transformer graph (one for the prompt, the steps and the latent pass) and its embedding tables."""
        if self._transformer is None:
            path = self.path("ar_transformer")
            self._transformer = self.backend.transformer(path), Path(path).parent
        return self._transformer

    def release(self):
        """Every loaded graph gives back the working memory its runtime keeps between runs (`Runner.release`)."""
        for runner in self._runners.values():
            runner.release()
        if self._transformer is not None:
            self._transformer[0].release()

    def describe(self):
        return self.backend.describe()


def network_config(network, models_dir):
    """Constructor arguments of the torch network: its class defaults overridden by the (released or config.json)
    config — what the graph object needs to know without building the network."""
    cls = checkpoints.model_class(network)
    params = inspect.signature(cls.__init__).parameters
    cfg = {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}
    cfg.update(checkpoints.model_config(network, models_dir))
    return cfg


class _GraphObject:
    def __init__(self, graphs):
        self.graphs = graphs

    def describe(self):
        return self.graphs.describe()

    def eval(self):  # the pipeline treats networks as modules
        return self

    def to(self, *args, **kwargs):
        return self

    def release_memory(self):
        """After a stage: the runtimes' buffers (and OpenVINO's decode cache) back to the system; torch frees its
        activations as they go, a compiled graph keeps them until told."""
        self.graphs.release()


# ---------------------------------------------------------------------------------------------------------------
class AutoregressiveGraphs(_GraphObject, DecodeLoop):
    """UnifiedVoice on graphs: the conditioning encoder, and one transformer graph for the prompt, the decode steps (KV
    cache in place) and the latent pass."""

    def __init__(self, graphs, config):
        super().__init__(graphs)
        self.model_dim = config["model_dim"]
        self.layers, self.heads = config["layers"], config["heads"]
        self.number_text_tokens = config["number_text_tokens"]
        types = config.get("types", 1)
        start_text = config.get("start_text_token")
        self.start_text_token = self.number_text_tokens * types if start_text is None else start_text
        self.stop_text_token = 0
        self.number_mel_codes = config["number_mel_codes"]
        self.start_mel_token, self.stop_mel_token = config["start_mel_token"], config["stop_mel_token"]
        self.max_mel_tokens, self.max_text_tokens = config["max_mel_tokens"], config["max_text_tokens"]
        self.mel_length_compression = config["mel_length_compression"]
        self.mel_positions = self.max_mel_tokens + 2 + config["max_conditioning_inputs"]
        self.position_offset = 0
        self._embeddings = None

    def post_init_gpt2_config(self, use_deepspeed=False, kv_cache=True, half=False, *, position_mode="original",
                              **_ignored):
        """UnifiedVoice's inference settings, as far as graphs have them: the mel position rule of the decode loop
        (`tortoise.models.decoding.position_offset`); the rest (compile, prepack, int8, half) are torch-only."""
        self.position_offset = position_offset(position_mode, kv_cache)

    # -- conditioning ----------------------------------------------------------------------------------------------
    def get_conditioning(self, speech_conditioning_input):
        """(B, 80, S) or (B, N, 80, S) mels -> (B, d)."""
        mels = speech_conditioning_input
        if mels.dim() == 3:
            mels = mels.unsqueeze(1)
        return self.graphs.runner("ar_conditioning").run({"mels": mels})[0]

    # -- the transformer graph and its embedding tables --------------------------------------------------------------
    def _transformer(self):
        transformer, directory = self.graphs.transformer()
        if self._embeddings is None:
            self._embeddings = Embeddings.load(directory, self)
        return transformer, self._embeddings

    # -- the decoder protocol (`tortoise.models.decoding`): the graph's prompt pass and step; the loop is shared ---
    def encode_prompt(self, plan, state):
        """The prompt pass once per distinct prompt; its cache is broadcast to every row (no copy on OpenVINO)."""
        transformer, emb = self._transformer()
        device = plan.cond_latent.device
        hidden, logits, cache = transformer.prompt(emb.prompt(plan.cond_latent, plan.text_inputs, plan.mel_tokens))
        state.prompt_len = cache.length
        state.cache = cache.select(plan.row_map, capacity=cache.length + state.max_new)
        rows = plan.row_map.cpu()
        state.logits, state.latent = logits[rows].to(device), hidden[:, -1][rows].to(device)

    def feed(self, state, tokens, mel_pos):
        """The step: ``tokens`` (B,) at ``mel_pos``, written into the state's cache in place."""
        transformer, emb = self._transformer()
        hidden, logits = transformer.step(emb.step(tokens, mel_pos), state.cache)
        return logits.to(tokens.device), hidden[:, -1].to(tokens.device)

    # -- latent pass -------------------------------------------------------------------------------------------------
    def latents(self, cond_latent, text_tokens, codes):
        """(B, d), (B, t), (B, m) -> final-normed hidden states (B, m, d): the latent pass."""
        transformer, emb = self._transformer()
        embeds, first = emb.latent(cond_latent, text_tokens, codes)
        return transformer.latents(embeds)[:, first:first + codes.shape[1]].to(codes.device)

    def __call__(self, speech_conditioning_latent, text_inputs, text_lengths, mel_codes, wav_lengths, types=None,
                 text_first=True, raw_mels=None, return_attentions=False, return_latent=False, clip_inputs=True):
        """``UnifiedVoice.forward`` as the pipeline calls it for the latent pass (``return_latent=True,
        clip_inputs=False``, lengths that cover the whole inputs); other uses need the torch network."""
        full = (int(torch.as_tensor(text_lengths).max()) == text_inputs.shape[1]
                and int(torch.as_tensor(wav_lengths).max()) >= mel_codes.shape[1] * self.mel_length_compression)
        if not return_latent or clip_inputs or types is not None or raw_mels is not None or return_attentions \
                or not text_first or not full:
            raise ValueError("the graph backends run only the latent pass (return_latent=True, clip_inputs=False, "
                             "full lengths); use --backend torch for other forward() calls")
        return self.latents(speech_conditioning_latent, text_inputs, mel_codes)

    forward = __call__


# ---------------------------------------------------------------------------------------------------------------
class ClvpGraphs(_GraphObject):
    """CLVP on graphs: text and speech encoders; scores as `CLVP.forward` / `CLVP.score` compute them."""

    def encode_text(self, text_tokens):
        return self._text(text_tokens)[0]

    def _text(self, text_tokens):
        latents, scale = self.graphs.runner("clvp_text").run({"text_tokens": text_tokens})
        return latents, scale

    def encode_speech(self, speech_tokens):
        return self.graphs.runner("clvp_speech").run({"codes": speech_tokens})[0]

    def score(self, text_tokens, speech_tokens):
        """One text (1, T) against B candidates (B, S) -> (B,)."""
        if text_tokens.dim() == 1:
            text_tokens = text_tokens[None]
        text_latent, scale = self._text(text_tokens[:1])
        return (self.encode_speech(speech_tokens) @ text_latent[0]) * scale[0]

    def __call__(self, text, speech_tokens, return_loss=False):
        """text (B, T), codes (B, S) -> similarities (B,) (the pipeline's call; the loss is training-only)."""
        if return_loss:
            raise ValueError("the graph backends compute scores only (return_loss=False)")
        if text.shape[0] > 1 and torch.equal(text, text[:1].expand_as(text)):
            text_latents, scale = self._text(text[:1])
            text_latents = text_latents.expand(text.shape[0], -1)
        else:
            text_latents, scale = self._text(text)
        return (text_latents * self.encode_speech(speech_tokens)).sum(dim=-1) * scale[0]

    forward = __call__


# ---------------------------------------------------------------------------------------------------------------
class DiffusionGraphs(_GraphObject):
    """DiffusionTts on graphs: voice latent, timestep-independent code embedding, the guided and the unguided step.
    Plugs into `tortoise.utils.diffusion`'s samplers as the model (they call ``forward_guided`` when guiding, the
    model itself otherwise)."""

    def __init__(self, graphs, config):
        super().__init__(graphs)
        self.in_channels, self.out_channels = config["in_channels"], config["out_channels"]
        self.model_channels = config["model_channels"]

    def get_conditioning(self, conditioning_input):
        """Mel clips (B, K, 100, L) or (B, 100, L) -> voice latent (B, 2C)."""
        clips = conditioning_input.unsqueeze(1) if conditioning_input.dim() == 3 else conditioning_input
        return self.graphs.runner("diffusion_conditioning").run({"clips": clips})[0]

    def timestep_independent(self, aligned_conditioning, conditioning_latent, expected_seq_len, return_code_pred):
        """AR latents (B, S, d) + voice latent (B, 2C) -> code embedding (B, C, expected_seq_len)."""
        if not aligned_conditioning.is_floating_point():
            raise ValueError("the graph backends take AR latents as the diffusion's conditioning, not codes")
        if return_code_pred:
            raise ValueError("return_code_pred is training-only; the graph backends do not export it")
        if expected_seq_len != output_length(aligned_conditioning.shape[1]):
            raise ValueError(f"the exported diffusion embedding makes output_length({aligned_conditioning.shape[1]}) "
                             f"= {output_length(aligned_conditioning.shape[1])} frames, not {expected_seq_len}")
        return self.graphs.runner("diffusion_embedding").run({"latents": aligned_conditioning,
                                                              "cond_latent": conditioning_latent})[0]

    def _code_embedding(self, x, aligned_conditioning, conditioning_latent, precomputed_aligned_embeddings):
        if precomputed_aligned_embeddings is not None:
            return precomputed_aligned_embeddings
        if aligned_conditioning is None or conditioning_latent is None:
            raise ValueError("the diffusion step needs precomputed_aligned_embeddings, or aligned_conditioning with "
                             "conditioning_latent")
        return self.timestep_independent(aligned_conditioning, conditioning_latent, x.shape[-1], False)

    def forward_guided(self, x, timesteps, aligned_conditioning=None, conditioning_latent=None,
                       precomputed_aligned_embeddings=None):
        """Conditional and unconditional outputs (B, 200, T) each, from one graph run of 2B items."""
        emb = self._code_embedding(x, aligned_conditioning, conditioning_latent, precomputed_aligned_embeddings)
        emb = emb.expand(x.shape[0], -1, -1)
        out, out_uncond = self.graphs.runner("diffusion_step").run({"x": x, "timesteps": timesteps.float(),
                                                                    "code_emb": emb})
        return out, out_uncond

    def __call__(self, x, timesteps, aligned_conditioning=None, conditioning_latent=None,
                 precomputed_aligned_embeddings=None, conditioning_free=False, return_code_pred=False):
        """The unguided call (samplers without guidance): the unguided step graph, one pass of B items. The
        unconditional output alone (``conditioning_free``, which no preset asks for by itself) comes from the guided
        graph, whose inputs hold the learned unconditioned embedding."""
        if return_code_pred:
            raise ValueError("return_code_pred is training-only; the graph backends do not export it")
        if conditioning_free:
            return self.forward_guided(x, timesteps, aligned_conditioning, conditioning_latent,
                                       precomputed_aligned_embeddings)[1]
        emb = self._code_embedding(x, aligned_conditioning, conditioning_latent, precomputed_aligned_embeddings)
        return self.graphs.runner("diffusion_step_unguided").run({"x": x, "timesteps": timesteps.float(),
                                                                  "code_emb": emb.expand(x.shape[0], -1, -1)})[0]

    forward = __call__


# ---------------------------------------------------------------------------------------------------------------
class UnivNetGraph(_GraphObject):
    """UnivNet on a graph: ``inference(mel, z=None)`` with the noise drawn in torch exactly as the network does."""

    def __init__(self, graphs, config):
        super().__init__(graphs)
        self.noise_dim = config["noise_dim"]
        self.mel_channel = config["n_mel_channels"]
        self.hop_length = config["hop_length"]

    def inference(self, c, z=None):
        if z is None:  # from the CPU generator, as UnivNetGenerator.inference draws it
            z = torch.randn(c.shape[0], self.noise_dim, c.shape[2] + INFERENCE_PAD_FRAMES).to(device=c.device)
        return self.graphs.runner("univnet").run({"mel": c, "z": z})[0]

    __call__ = inference


class BigVGANGraph(_GraphObject):
    """BigVGAN on a graph: mel (B, 100, T) -> waveform (B, 1, 256 T) in [-1, 1] (the `Vocoder` call)."""

    def __init__(self, graphs, component):
        super().__init__(graphs)
        self.component = component

    def inference(self, mel):
        return self.graphs.runner(self.component).run({"mel": mel})[0]

    __call__ = inference


class HifiganGraph(_GraphObject):
    """The HiFi-GAN decoder on a graph: ``inference(latents (B, m, d), cond_latent (1 or B, d))``."""

    def inference(self, c, g=None):
        if g is None:
            raise ValueError("the HiFi-GAN decoder needs the AR conditioning latent")
        g = g.squeeze(-1) if g.dim() == 3 else g
        return self.graphs.runner("hifigan").run({"latents": c, "cond_latent": g.expand(c.shape[0], -1)})[0]

    __call__ = inference
