"""Parity fixtures for UnifiedVoice from the ORIGINAL implementation (tortoise-tts 3.0.0, transformers 4.31).

Run with the original's environment (our package is not installed there):

    /work/origenv/bin/python tests/parity/make_autoregressive_fixtures.py

Writes, under ``tests/parity/fixtures/autoregressive/``:
  released_keys.json  the released config's state-dict keys and shapes (built on the meta device), the keys
                      `post_init_gpt2_config` adds (aliases), and the non-persistent buffers HF GPT-2 registers
                      (`attn.bias` / `attn.masked_bias`, which older checkpoints carry as saved keys);
  tiny.pt             a tiny random-weight UnifiedVoice (every parameter perturbed so zero-initialised branches
                      take part): config, state dict, and for fixed inputs and seeds: conditioning latents,
                      teacher-forced losses / logits / latents, greedy and sampled codes with kv_cache=True and
                      False, a stop-biased head (rows stop at different steps), typical sampling, input_tokens.
Deterministic: re-running produces the same tensors.
"""
import json
import os

import torch

from tortoise.models.autoregressive import UnifiedVoice

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "autoregressive")

RELEASED = dict(max_mel_tokens=604, max_text_tokens=402, max_conditioning_inputs=2, layers=30, model_dim=1024,
                heads=16, number_text_tokens=255, start_text_token=255, checkpointing=False,
                train_solo_embeddings=False)
TINY = dict(layers=2, model_dim=64, heads=4, max_text_tokens=24, max_mel_tokens=40, max_conditioning_inputs=2,
            number_text_tokens=255, start_text_token=255, number_mel_codes=514, start_mel_token=512,
            stop_mel_token=513, checkpointing=False, train_solo_embeddings=False)
PIPELINE_SAMPLING = dict(do_sample=True, top_p=.8, temperature=.8, repetition_penalty=2.0, length_penalty=1.0)
STOP_BIAS = 3.0  # added to mel_head.bias[stop_mel_token] for the "biased" cases so rows stop early


def released_keys():
    with torch.device("meta"):
        model = UnifiedVoice(**RELEASED)
    keys = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    persistent = {k for k, _ in keys}
    non_persistent = [[k, list(v.shape), str(v.dtype)] for k, v in model.named_buffers() if k not in persistent]
    model.post_init_gpt2_config(kv_cache=True)
    added = [[k, list(v.shape)] for k, v in model.state_dict().items() if k not in persistent]
    return {"config": RELEASED, "keys": keys, "added_by_post_init_gpt2_config": added,
            "non_persistent_buffers": non_persistent}


def build_tiny(seed=0):
    torch.manual_seed(seed)
    model = UnifiedVoice(**TINY)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def decode(model, kv_cache, cond, text, seed, **kwargs):
    model.post_init_gpt2_config(kv_cache=kv_cache)
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.inference_speech(cond, text, **kwargs)


def decode_cases(model, cond, text):
    """name -> (kwargs, seed); each run with the original's kv_cache=True and kv_cache=False."""
    return {
        "greedy": (dict(do_sample=False, max_generate_length=12), 0),
        "greedy_penalty": (dict(do_sample=False, repetition_penalty=2.0, max_generate_length=12), 0),
        "sampled": (dict(PIPELINE_SAMPLING, num_return_sequences=4, max_generate_length=16), 1234),
        "sampled_no_topk": (dict(PIPELINE_SAMPLING, top_k=0, num_return_sequences=3, max_generate_length=10), 7),
        "typical": (dict(PIPELINE_SAMPLING, typical_sampling=True, typical_mass=.9, num_return_sequences=2,
                         max_generate_length=10), 11),
        "input_tokens": (dict(PIPELINE_SAMPLING, input_tokens=torch.tensor([[5, 77, 300]]), num_return_sequences=2,
                              max_generate_length=8), 3),
    }


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "released_keys.json"), "w") as f:
        json.dump(released_keys(), f, indent=0)

    model = build_tiny()
    torch.manual_seed(42)
    mels = torch.randn(1, 2, 80, 48)
    text = torch.randint(1, 255, (1, 10))
    codes = torch.randint(0, 512, (2, 20))
    text2 = torch.randint(1, 255, (2, 12))
    with torch.no_grad():
        cond = model.get_conditioning(mels)  # (1, d)
        cond_b = cond.repeat(2, 1)
        text_lengths, wav_lengths = torch.tensor([12, 7]), torch.tensor([20 * 1024, 13 * 1024 + 5])
        loss_text, loss_mel, mel_logits = model(cond_b, text2, text_lengths, codes, wav_lengths)
        latents_clip = model(cond_b, text2, text_lengths, codes, wav_lengths, return_latent=True)
        latents_api = model(cond_b, text.repeat(2, 1), torch.tensor([10]), codes,
                            torch.tensor([codes.shape[1] * 1024]), return_latent=True, clip_inputs=False)
        text_first_false = model(cond_b, text2, text_lengths, codes, wav_lengths, text_first=False)
        attentions = model(cond_b, text2, text_lengths, codes, wav_lengths, return_attentions=True)

    fixture = {
        "config": TINY, "state_dict": {k: v.clone() for k, v in model.state_dict().items()},
        "stop_bias": STOP_BIAS,
        "mels": mels, "cond": cond, "text": text, "codes": codes, "text2": text2,
        "text_lengths": text_lengths, "wav_lengths": wav_lengths,
        "loss_text": loss_text, "loss_mel": loss_mel, "mel_logits": mel_logits,
        "latents_clip": latents_clip, "latents_api": latents_api,
        "text_first_false_mel_logits": text_first_false[2], "attention_layer1": attentions[1],
        "decode": {},
    }
    torch.manual_seed(43)
    fixture["mels3d_input"] = torch.randn(2, 80, 48)
    with torch.no_grad():
        fixture["mels3d_cond"] = model.get_conditioning(fixture["mels3d_input"])  # 3-d input: one clip per row

    for biased in (False, True):
        if biased:
            with torch.no_grad():
                model.mel_head.bias[model.stop_mel_token] += STOP_BIAS
        for name, (kwargs, seed) in decode_cases(model, cond, text).items():
            for kv in (True, False):
                out = decode(model, kv, cond, text, seed, **kwargs)
                key = f"{name}{'_biased' if biased else ''}_kv{int(kv)}"
                fixture["decode"][key] = out
                print(key, tuple(out.shape), "stops per row:", (out == model.stop_mel_token).sum(1).tolist())
    torch.save(fixture, os.path.join(OUT, "tiny.pt"))


if __name__ == "__main__":
    main()
