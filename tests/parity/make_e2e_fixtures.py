"""End-to-end parity fixture: the ORIGINAL ``TextToSpeech.tts`` on tiny networks, fixed seed, fixed latents.

    /work/origenv/bin/python tests/parity/make_e2e_fixtures.py      (any env made by tests/parity/make_env.sh)

The weights are not stored: both sides build them from the same seeded recipe (``weight_recipe.recipe_weights``,
torch only) over the networks' own key lists, so the fixture holds only the configs, inputs and the audio. The tiny
configs are those of ``tortoise.utils.checkpoints.TINY_CONFIGS`` (written out here: this environment has the
original ``tortoise`` package, not ours).
"""
import os
import sys

import torch

from weight_recipe import recipe_weights  # this directory: shared with the tests

import tortoise
if "site-packages" not in tortoise.__file__:
    sys.exit(f"refusing to run: {tortoise.__file__} is not the original implementation (run from outside the repo)")
from tortoise import api as oapi
from tortoise.models.autoregressive import UnifiedVoice
from tortoise.models.clvp import CLVP
from tortoise.models.diffusion_decoder import DiffusionTts
from tortoise.models.vocoder import UnivNetGenerator
from tortoise.utils.tokenizer import VoiceBpeTokenizer

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "pipeline", "e2e.pt")

CONFIGS = {
    "autoregressive": dict(max_mel_tokens=604, max_text_tokens=402, max_conditioning_inputs=2, layers=2, model_dim=64,
                           heads=4, number_text_tokens=255, start_text_token=255, checkpointing=False,
                           train_solo_embeddings=False),
    "diffusion": dict(model_channels=64, num_layers=2, in_channels=100, out_channels=200, in_latent_channels=64,
                      in_tokens=8193, dropout=0, use_fp16=False, num_heads=2, layer_drop=0, unconditioned_percentage=0),
    "clvp": dict(dim_text=32, dim_speech=32, dim_latent=32, num_text_tokens=256, text_enc_depth=1, text_seq_len=350,
                 text_heads=2, num_speech_tokens=8192, speech_enc_depth=1, speech_heads=2, speech_seq_len=430,
                 use_xformers=True),
    "vocoder": dict(noise_dim=8, channel_size=8),
}
SEEDS = {"autoregressive": 11, "diffusion": 12, "clvp": 13, "vocoder": 14}
STOP_BIAS = 1.0  # case 3: added to the stop token's mel_head bias so samples stop at different steps (calm-token
#                   fixes, padding, ranking of unequal lengths and the latent trim all take part)
CASES = [  # (text, tts kwargs, stop bias)
    ("Hello there, how are you today?", dict(num_autoregressive_samples=4, max_mel_tokens=30, diffusion_iterations=4,
                                             cond_free=True, cond_free_k=2.0, temperature=0.8, top_p=0.8,
                                             repetition_penalty=2.0, length_penalty=1.0, diffusion_temperature=1.0,
                                             k=2, use_deterministic_seed=1234), 0.0),
    ("A second, shorter one.", dict(num_autoregressive_samples=4, max_mel_tokens=24, diffusion_iterations=3,
                                    cond_free=False, temperature=0.6, top_p=0.9, repetition_penalty=1.5,
                                    length_penalty=1.0, diffusion_temperature=0.8, k=1, use_deterministic_seed=7), 0.0),
    ("Stopping early, at last.", dict(num_autoregressive_samples=4, max_mel_tokens=40, diffusion_iterations=3,
                                      cond_free=True, cond_free_k=2.0, temperature=0.8, top_p=0.8,
                                      repetition_penalty=2.0, length_penalty=1.0, diffusion_temperature=1.0,
                                      k=2, use_deterministic_seed=5), STOP_BIAS),
]


def keys_of(model):
    return [(k, list(v.shape)) for k, v in model.state_dict().items()]


def load(model, name, stop_bias=0.0):
    keys = keys_of(model)
    sd = recipe_weights(keys, SEEDS[name])
    if stop_bias:
        sd["mel_head.bias"][8193] += stop_bias
    model.load_state_dict(sd, strict=True)
    return keys


def _record(codes, lengths):
    """Note where each sample stopped (its length when it never did)."""
    for row in codes:
        stops = (row == 8193).nonzero()
        lengths.append(int(stops[0]) if len(stops) else int(row.shape[0]))
    return codes


def main():
    torch.set_num_threads(1)
    tts = object.__new__(oapi.TextToSpeech)  # the constructor would download the released checkpoints
    tts.models_dir, tts.autoregressive_batch_size, tts.enable_redaction = None, 4, False
    tts.device, tts.half, tts.cvvp = torch.device("cpu"), False, None
    tts.tokenizer = VoiceBpeTokenizer()
    keys = {}
    tts.diffusion = DiffusionTts(**CONFIGS["diffusion"]).eval()
    keys["diffusion"] = load(tts.diffusion, "diffusion")
    tts.clvp = CLVP(**CONFIGS["clvp"]).eval()
    keys["clvp"] = load(tts.clvp, "clvp")
    tts.vocoder = UnivNetGenerator(**CONFIGS["vocoder"])
    keys["vocoder"] = load(tts.vocoder, "vocoder")  # released layout: weight_g / weight_v
    tts.vocoder.eval(inference=True)
    gen = torch.Generator().manual_seed(99)
    latents = (0.5 * torch.randn(1, 64, generator=gen), 0.5 * torch.randn(1, 128, generator=gen))
    cases = []
    for text, kw, stop_bias in CASES:
        tts.autoregressive = UnifiedVoice(**CONFIGS["autoregressive"]).eval()
        keys["autoregressive"] = load(tts.autoregressive, "autoregressive", stop_bias)
        tts.autoregressive.post_init_gpt2_config(kv_cache=False)  # the original's default
        lengths = []
        real = tts.autoregressive.inference_speech
        tts.autoregressive.inference_speech = lambda *a, **k: _record(real(*a, **k), lengths)
        with torch.no_grad():
            out = tts.tts(text, conditioning_latents=latents, verbose=False, **kw)
        del tts.autoregressive.inference_speech
        wavs = out if isinstance(out, list) else [out]
        cases.append(dict(text=text, kwargs=kw, stop_bias=stop_bias, code_lengths=lengths,
                          wavs=[w.float().contiguous() for w in wavs]))
        print("sample lengths (to the stop token):", lengths)
        print(text, [tuple(w.shape) for w in wavs], float(wavs[0].abs().max()))
    torch.save(dict(configs=CONFIGS, seeds=SEEDS, keys=keys, latents=list(latents), cases=cases), OUT)
    print(OUT, os.path.getsize(OUT))


if __name__ == "__main__":
    main()
