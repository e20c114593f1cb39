"""TextToSpeech end to end on tiny random-weight models: presets, samplers, candidates and their ranking, voices,
cached latents, the padding change, streaming, determinism, low-VRAM mode and out-of-memory halving."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from tortoise import api, pipeline
from tortoise.pipeline import Conditioning
from xpu.testing import cpu_features

TEXT = "Hello there, world."
FAST = dict(num_autoregressive_samples=4, max_mel_tokens=24, diffusion_iterations=3)


@pytest.fixture(scope="module")
def tts(models_dir):
    return api.TextToSpeech(models_dir=models_dir, device="cpu", autoregressive_batch_size=4,
                            enable_redaction=False)


def tone(seconds, f0, sr=22050, seed=0):
    t = torch.arange(int(sr * seconds)) / sr
    noise = 0.01 * torch.randn(t.shape[0], generator=torch.Generator().manual_seed(seed))
    return (0.3 * torch.sin(2 * torch.pi * f0 * t) * (0.6 + 0.4 * torch.sin(2 * torch.pi * 3 * t)) + noise)[None]


@pytest.fixture(scope="module")
def clips():
    return [tone(3.0, 220.0, seed=1), tone(7.0, 180.0, seed=2)]  # the second is longer than 6 s: cropped


# ---------------------------------------------------------------- options and presets (data)

FF_TABLE = {  # the fast fork's tts_with_preset: samples, iterations, sampler, cond_free
    "single_sample": (8, 10, "ddim", True), "ultra_fast": (16, 10, "ddim", True),
    "ultra_fast_old": (16, 30, "ddim", False), "very_fast": (32, 30, "dpm++2m", True),
    "fast": (96, 20, "dpm++2m", True), "fast_old": (96, 80, "ddim", True),
    "standard": (256, 200, "ddim", True), "high_quality": (256, 400, "ddim", True),
    "original_ultra_fast": (16, 30, "p", False), "original_fast": (96, 80, "p", True),
    "original_standard": (256, 200, "p", True), "original_high_quality": (256, 400, "p", True),
}


@pytest.mark.parametrize("name", list(FF_TABLE))
def test_presets_match_their_sources(name):
    o = api.PRESETS[name]
    assert (o.num_autoregressive_samples, o.diffusion_iterations, o.sampler, o.cond_free) == FF_TABLE[name]
    assert o.temperature == (0.8 if name.startswith("original_") else 0.2)
    assert (o.length_penalty, o.repetition_penalty, o.top_p, o.cond_free_k, o.diffusion_temperature) == (
        1.0, 2.0, 0.8, 2.0, 1.0)


def test_preset_overrides_and_validation():
    o = api.preset_options("fast", temperature=0.5, diffusion_iterations=7)
    assert (o.temperature, o.diffusion_iterations, o.sampler) == (0.5, 7, "dpm++2m")
    assert api.PRESETS["fast"].temperature == 0.2  # presets are frozen data
    with pytest.raises(dataclasses.FrozenInstanceError):
        api.PRESETS["fast"].temperature = 1.0
    with pytest.raises(ValueError, match="unknown preset"):
        api.preset_options("turbo")
    with pytest.raises(TypeError, match="unknown generation option"):
        api.preset_options("fast", temprature=0.5)
    with pytest.raises(ValueError, match="dpm\\+\\+2m sampler needs cond_free"):
        api.preset_options("fast", cond_free=False)
    with pytest.raises(ValueError, match="top_p"):
        api.GenerationOptions(top_p=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        api.GenerationOptions(sampler="euler")


# ---------------------------------------------------------------- pipeline helpers

def test_fix_autoregressive_output_and_calm_trim():
    codes = torch.tensor([5, 6, 7, 8193, 8193, 8193] + [8193] * 14)
    fixed = api.fix_autoregressive_output(codes.clone(), 8193)
    assert fixed[:3].tolist() == [5, 6, 7] and fixed[3:-3].eq(83).all() and fixed[-3:].tolist() == [45, 45, 248]
    latents = torch.arange(20.0)[:, None]
    assert api.trim_at_calm(fixed, latents).shape[0] == 3 + 8  # cut where the 9th calm token sits


def test_padding_to_longest_keeps_the_originals_trim():
    """Padding to the longest sample (+ margin) instead of max_mel_tokens gives every sample the same calm-token cut
    as the original's padding to max_mel_tokens."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for stop_at in (5, 17, 30):
        r = torch.randint(0, 8000, (1, 31), generator=gen)
        r[0, stop_at:] = 8193
        rows.append(r[:, :stop_at + 1])
    ours = api.pad_codes(rows, 8193, max_mel_tokens=500)
    assert ours.shape[1] == 31 + api.CODE_PAD_MARGIN
    theirs = torch.cat([torch.nn.functional.pad(r, (0, 500 - r.shape[1]), value=8193) for r in rows])
    lat = torch.randn(500, 2)
    for a, b in zip(ours, theirs):
        a, b = api.fix_autoregressive_output(a.clone(), 8193), api.fix_autoregressive_output(b.clone(), 8193)
        assert api.trim_at_calm(a, lat).shape == api.trim_at_calm(b, lat).shape
    assert api.pad_codes(rows, 8193, max_mel_tokens=35).shape[1] == 35  # near the cap: the original's padding


def test_latent_pass_on_short_padding_equals_padding_to_max(tts):
    """The AR model is causal: latents of the codes are the same whatever the padding after them."""
    ar = tts.autoregressive
    text = tts._text_tokens(TEXT)
    cond = torch.randn(1, ar.model_dim, generator=torch.Generator().manual_seed(3))
    codes = torch.randint(0, 8000, (2, 10), generator=torch.Generator().manual_seed(4))
    codes[0, 6:] = 8193
    short = torch.nn.functional.pad(codes, (0, 2), value=8193)
    long = torch.nn.functional.pad(codes, (0, 40), value=8193)
    a, b = (pipeline.ar_latents(tts.models, Conditioning(cond), text, c) for c in (short, long))
    torch.testing.assert_close(a, b[:, :a.shape[1]], rtol=1e-5, atol=1e-5)


def test_chunk_crossfader_reassembles_a_fixed_signal():
    sig = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    fader = api.ChunkCrossfader(256)
    parts = [fader.push(sig[:n]) for n in (1200, 1300, 3000, 5000)] + [fader.finish()]
    torch.testing.assert_close(torch.cat(parts), sig)  # identical overlaps: the fade is exact


# ---------------------------------------------------------------- end to end

def test_random_voice_ultra_fast_is_deterministic(tts):
    a = tts.tts_with_preset(TEXT, "ultra_fast", verbose=False, use_deterministic_seed=7, **FAST)
    b = tts.tts_with_preset(TEXT, "ultra_fast", verbose=False, use_deterministic_seed=7, **FAST)
    c = tts.tts_with_preset(TEXT, "ultra_fast", verbose=False, use_deterministic_seed=8, **FAST)
    assert a.dim() == 3 and a.shape[:2] == (1, 1) and a.shape[2] > 0 and torch.isfinite(a).all()
    assert a.abs().max() <= 1.0
    assert torch.equal(a, b)
    assert a.shape != c.shape or not torch.equal(a, c)


@pytest.mark.parametrize("sampler,cond_free", [("p", False), ("ddim", True), ("dpm++2m", True)])
def test_samplers(tts, sampler, cond_free):
    wav = tts.tts(TEXT, verbose=False, use_deterministic_seed=1, sampler=sampler, cond_free=cond_free, **FAST)
    assert wav.shape[-1] > 0 and torch.isfinite(wav).all()


def test_candidates_are_ranked_by_clvp_and_cvvp(tts, clips):
    text = tts._text_tokens(TEXT)
    latents = tts.get_conditioning_latents(clips, return_mels=True)
    cond, auto_conds = Conditioning(latents[0], latents[1], latents[2]), latents[2]
    codes = torch.randint(0, 8000, (6, 12), generator=torch.Generator().manual_seed(5))
    codes[:, 9:] = 8193
    opts = api.GenerationOptions(num_autoregressive_samples=6, max_mel_tokens=12)
    with torch.no_grad():
        best = pipeline.rank(tts.models, text, codes.clone(), cond, opts, 3, batch_size=4)
        fixed = torch.stack([api.fix_autoregressive_output(r.clone(), 8193, complain=False) for r in codes])
        clvp = tts.clvp(text.repeat(6, 1), fixed, return_loss=False)
        assert torch.equal(best, fixed[clvp.topk(3).indices])
        best = pipeline.rank(tts.models, text, codes.clone(), cond, dataclasses.replace(opts, cvvp_amount=0.5), 2,
                             batch_size=4)
        cvvp = sum(tts.load_cvvp()(auto_conds[:, c].repeat(6, 1, 1), fixed, return_loss=False)
                   for c in range(auto_conds.shape[1])) / auto_conds.shape[1]
        assert torch.equal(best, fixed[(0.5 * cvvp + 0.5 * clvp).topk(2).indices])


def test_k_candidates_with_a_voice_and_cvvp(tts, clips):
    wavs = tts.tts(TEXT, voice_samples=clips, k=2, verbose=False, use_deterministic_seed=2, cvvp_amount=0.5, **FAST)
    assert isinstance(wavs, list) and len(wavs) == 2 and all(w.shape[:2] == (1, 1) for w in wavs)


def test_conditioning_latents_are_cached_per_voice(tts, clips):
    calls = []
    ar = tts.autoregressive
    original = ar.get_conditioning
    ar.get_conditioning = lambda x: calls.append(x.shape) or original(x)
    try:
        tts.deterministic_state(11)
        a = tts.get_conditioning_latents(clips)
        tts.deterministic_state(11)
        b = tts.get_conditioning_latents(clips)
    finally:
        del ar.get_conditioning
    assert len(calls) == 1 and all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (1, ar.model_dim) and a[1].shape[0] == 1


def test_latent_averaging_modes(tts, clips):
    outs = {m: tts.get_conditioning_latents(clips, return_mels=True, latent_averaging_mode=m) for m in (0, 1, 2)}
    n_chunks = sum(-(-round(c.shape[-1] * 24000 / 22050) // api.DIFFUSION_COND_LENGTH) for c in clips)
    assert outs[0][3].shape[1] == 2 and outs[1][3].shape[1] == n_chunks and outs[2][3].shape[1] == 2
    assert not torch.equal(outs[0][1], outs[1][1])
    with pytest.raises(ValueError):
        tts.get_conditioning_latents(clips, latent_averaging_mode=3)


def test_saved_latents_reproduce_the_voice(tts, clips, tmp_path):
    tts.deterministic_state(3)  # the crop of the 7 s clip is drawn as tts() will draw it after seeding with 3
    latents = tts.get_conditioning_latents(clips)
    torch.save(tuple(t.cpu() for t in latents), tmp_path / "v.pth")
    loaded = torch.load(tmp_path / "v.pth", weights_only=True)
    a = tts.tts(TEXT, conditioning_latents=loaded, verbose=False, use_deterministic_seed=3, **FAST)
    b = tts.tts(TEXT, voice_samples=clips, verbose=False, use_deterministic_seed=3, **FAST)
    assert torch.equal(a, b)


@pytest.mark.parametrize("position_mode", ["original", "contiguous"])
def test_streaming_codes_match_inference_speech(tts, position_mode):
    """The streaming path's view of the decode loop (step by step, with latents) draws the same codes as the batch
    decoder for the same seed. With contiguous mel positions its latents are the latent pass's; with the original's
    cached-decoding position quirk (generated tokens one position on) only the first is, as in the original's own
    stream generator."""
    ar = tts.autoregressive
    text = tts._text_tokens(TEXT)
    cond = torch.randn(1, ar.model_dim, generator=torch.Generator().manual_seed(9))
    opts = dataclasses.replace(api.GenerationOptions(), temperature=0.9)
    ar.post_init_gpt2_config(kv_cache=True, position_mode=position_mode)
    try:
        torch.manual_seed(5)
        ref = ar.inference_speech(cond, text, num_return_sequences=1, max_generate_length=20,
                                  **opts.sampling_kwargs())[0]
        torch.manual_seed(5)
        state = ar.prefill(cond, text, 1, 20)
        steps = [(int(t[0]), lat[0]) for t, lat in ar.tokens(state, pipeline.sampling_options(opts))]
    finally:
        ar.post_init_gpt2_config(**tts.models.ar_settings)  # back to the pipeline's own settings
    codes = torch.tensor([c for c, _ in steps])
    assert torch.equal(codes, ref[:len(codes)])
    lat = torch.stack([lt for _, lt in steps])
    full = pipeline.ar_latents(tts.models, Conditioning(cond), text, ref[None])[0]
    n = len(codes) if position_mode == "contiguous" else 1
    torch.testing.assert_close(lat[:n], full[:n], rtol=1e-4, atol=1e-4)


def test_tts_stream_yields_crossfaded_chunks(tts):
    chunks = list(tts.tts_stream(TEXT, verbose=False, use_deterministic_seed=4, max_mel_tokens=30,
                                 stream_chunk_size=8, overlap_wav_len=128))
    assert len(chunks) >= 2 and all(c.dim() == 1 for c in chunks)
    wav = torch.cat(chunks)
    assert torch.isfinite(wav).all()
    again = torch.cat(list(tts.tts_stream(TEXT, verbose=False, use_deterministic_seed=4, max_mel_tokens=30,
                                          stream_chunk_size=8, overlap_wav_len=128)))
    assert torch.equal(wav, again)


def test_text_errors(tts):
    with pytest.raises(ValueError, match="Empty text"):
        tts.tts("  ", verbose=False, **FAST)
    with pytest.raises(ValueError, match="Text too long"):
        tts.tts("word " * 500, verbose=False, **FAST)
    with pytest.raises(ValueError, match="candidates"):
        tts.tts(TEXT, k=9, verbose=False, **FAST)


def test_out_of_memory_halves_the_batch_for_the_rest_of_the_run(tts, monkeypatch):
    """A fake device OOM at the hardware boundary: batches above 1 fail; the pipeline halves, says so, still returns
    every sample, and keeps the smaller batch size for the next clip."""
    ar = tts.autoregressive
    real = ar.prefill
    sizes = []

    def flaky(cond, text, n=1, *a, **kw):
        sizes.append(n)
        if n > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(cond, text, n, *a, **kw)

    monkeypatch.setattr(ar, "prefill", flaky)
    batch = pipeline.BatchSize(4)
    opts = api.GenerationOptions(num_autoregressive_samples=3, max_mel_tokens=10)
    cond = Conditioning(torch.zeros(1, ar.model_dim))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        codes = pipeline.sample_codes(tts.models, cond, tts._text_tokens(TEXT), opts, batch)
        assert codes.shape[0] == 3 and sizes == [3, 1, 1, 1] and batch.value == 1
        sizes.clear()
        codes = pipeline.sample_codes(tts.models, cond, tts._text_tokens(TEXT), opts, batch)
    assert codes.shape[0] == 3 and sizes == [1, 1, 1]  # the next clip starts at the smaller size
    assert sum("out of memory" in str(x.message) for x in w) == 1  # said once


def test_low_vram_mode_gives_the_same_audio(models_dir, tts):
    low = api.TextToSpeech(models_dir=models_dir, device="cpu", autoregressive_batch_size=4, high_vram=False,
                           enable_redaction=False)
    a = low.tts(TEXT, verbose=False, use_deterministic_seed=6, **FAST)
    b = tts.tts(TEXT, verbose=False, use_deterministic_seed=6, **FAST)
    assert torch.equal(a, b)


def test_missing_checkpoint_and_device_are_clear(tmp_path, monkeypatch):
    from tortoise.utils.checkpoints import CheckpointError
    from xpu import DeviceUnavailable
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="autoregressive.pth"):
        api.TextToSpeech(models_dir=tmp_path, device="cpu")
    with pytest.raises(DeviceUnavailable):
        api.TextToSpeech(models_dir=tmp_path, device="xpu:7")


def test_classifier_probability(models_dir):
    p = float(api.classify_audio_clip(tone(2.0, 300.0, sr=24000), models_dir=models_dir))
    assert 0.0 <= p <= 1.0 and np.isfinite(p)


@pytest.mark.parametrize("amx", [False, True], ids=["avx512-bf16", "amx"])
def test_half_casts_the_weights_once_where_the_device_has_a_half_dtype(models_dir, clips, monkeypatch, amx):
    """A CPU with native bf16 (faked at the device-layer boundary, whatever CPU runs the test): --half is bf16."""
    cpu_features(monkeypatch, bf16=True, amx=amx)
    tts = api.TextToSpeech(models_dir=models_dir, device="cpu", autoregressive_batch_size=4, half=True,
                           enable_redaction=False)
    assert tts.half_dtype == torch.bfloat16 and tts.precision == "bf16"
    assert next(tts.diffusion.parameters()).dtype == torch.bfloat16
    assert tts.autoregressive.dtype == torch.bfloat16 and tts.autoregressive.mel_head.weight.dtype == torch.float32
    assert next(tts.clvp.parameters()).dtype == torch.bfloat16
    assert next(tts.vocoder.parameters()).dtype == torch.float32  # vocoders always run in float32
    wav = tts.tts(TEXT, voice_samples=clips, verbose=False, use_deterministic_seed=1, cvvp_amount=0.5, **FAST)
    assert wav.dtype == torch.float32 and torch.isfinite(wav).all() and wav.shape[-1] > 0
    assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(TypeError, match="chosen once"):
        tts.tts(TEXT, verbose=False, half=False, **FAST)


def test_half_without_a_native_half_dtype_runs_float32_and_says_so(models_dir, monkeypatch):
    """A CPU without native bf16 (AVX2 only; faked at the device-layer boundary, whatever CPU runs the test)."""
    import xpu.dtype
    cpu_features(monkeypatch, bf16=False)
    xpu.dtype._WARNED.discard("half-cpu")
    with pytest.warns(UserWarning, match="running float32"):
        tts = api.TextToSpeech(models_dir=models_dir, device="cpu", half=True, preload=False)
    assert tts.half_dtype is None and tts.autoregressive.dtype == torch.float32 and tts.precision == "f32"
    forced = api.TextToSpeech(models_dir=models_dir, device="cpu", dtype="bfloat16", preload=False)
    assert forced.autoregressive.dtype == torch.bfloat16 and forced.precision == "bf16"  # bf16 even without it
    with pytest.raises(ValueError, match="unknown dtype"):
        api.TextToSpeech(models_dir=models_dir, device="cpu", dtype="int4", preload=False)


@pytest.mark.parametrize("exact", [False, True])
def test_exact_ranking_scores_codes_padded_as_the_original(tts, monkeypatch, exact):
    seen = []
    real = pipeline._score

    def spy(clvp, cvvp, text_tokens, batch, *a):
        seen.append(batch.shape[1])
        return real(clvp, cvvp, text_tokens, batch, *a)

    codes = torch.randint(0, 8000, (FAST["num_autoregressive_samples"], 12), generator=torch.Generator().manual_seed(5))
    codes[:, 9:] = 8193  # every sample stopped early: the default pads to 12, the original to max_mel_tokens
    monkeypatch.setattr(pipeline, "_score", spy)
    monkeypatch.setattr(pipeline, "sample_codes", lambda *a: codes.clone())
    tts.tts(TEXT, verbose=False, use_deterministic_seed=4, exact_ranking=exact, **FAST)
    assert seen == [FAST["max_mel_tokens"] if exact else 12]


def test_ar_speed_options_reach_the_model(models_dir):
    default = api.TextToSpeech(models_dir=models_dir, device="cpu", autoregressive_batch_size=2,
                               enable_redaction=False)
    ar = default.autoregressive
    assert ar.kv_cache and ar.position_mode == "contiguous"
    quirk = api.TextToSpeech(models_dir=models_dir, device="cpu", autoregressive_batch_size=2,
                             enable_redaction=False, kv_cache_positions="original")
    assert quirk.autoregressive.position_mode == "original" and quirk.autoregressive.kv_cache
    with pytest.raises(ValueError, match="kv_cache_positions"):
        api.TextToSpeech(models_dir=models_dir, device="cpu", kv_cache_positions="sideways", preload=False)


def test_samples_without_a_stop_token_are_reported(tts):
    text = tts._text_tokens(TEXT)
    codes = torch.randint(0, 8000, (3, 12), generator=torch.Generator().manual_seed(2))
    codes[0, 8:] = 8193  # one stopped, two never did
    opts = api.GenerationOptions(num_autoregressive_samples=3, max_mel_tokens=12)
    cond = Conditioning(torch.zeros(1, tts.autoregressive.model_dim))
    with pytest.warns(UserWarning, match="2 of 3 samples have no stop token"):
        pipeline.rank(tts.models, text, codes, cond, opts, 1, batch_size=4)


def test_conditioning_latents_of_other_models_are_one_clear_error(tts):
    wide = (torch.zeros(1, 1024), torch.zeros(1, 2048))  # the released widths; these tiny models want others
    with pytest.raises(ValueError, match="regenerate the file") as e:
        tts.tts(TEXT, conditioning_latents=wide, verbose=False, **FAST)
    assert "\n" not in str(e.value)
    nan = (torch.full((1, tts.autoregressive.model_dim), float("nan")), torch.zeros(1, 128))
    with pytest.raises(ValueError, match="NaN"):
        tts.tts(TEXT, conditioning_latents=nan, verbose=False, **FAST)


def test_latents_that_overflow_the_model_stop_with_the_stage_named(tts):
    """Finite but absurd latents (1e30) overflow the AR model: the first logits are not finite."""
    huge = (torch.full((1, tts.autoregressive.model_dim), 1e30), torch.zeros(1, 128))
    with pytest.raises(pipeline.NonFiniteError, match="first logits"):
        tts.tts(TEXT, conditioning_latents=huge, verbose=False, **FAST)


# (backend, half, dtype, ort provider, OpenVINO device, --backend_precision, CPU with native bf16) -> precision
GRAPH_PRECISIONS = [
    ("openvino", False, None, "cpu", "CPU", None, True, "f32"),  # never the plugin's own bf16 default
    ("openvino", False, None, "cpu", "CPU", None, False, "f32"),
    ("openvino", True, None, "cpu", "CPU", None, True, "bf16"),
    ("openvino", True, None, "cpu", "CPU", None, False, "f32"),  # as torch: said once, runs float32
    ("openvino", True, None, "cpu", "GPU", None, False, "f16"),  # Arc
    ("openvino", True, None, "cpu", "AUTO", None, True, "f16"),
    ("openvino", False, "bfloat16", "cpu", "CPU", None, False, "bf16"),  # a forced dtype wins
    ("openvino", True, None, "cpu", "CPU", "f32", True, "f32"),  # and --backend_precision over both
    ("openvino", False, None, "cpu", "CPU", "bf16", False, "bf16"),
    ("openvino", True, None, "cpu", "CPU", "int8", True, "int8"),  # int8 weights: an OpenVINO precision
    ("onnxruntime", False, None, "cpu", "CPU", None, True, "f32"),
    ("onnxruntime", True, None, "cpu", "CPU", None, True, "f32"),  # no half CPU path in ONNX Runtime: said once
    ("onnxruntime", True, None, "cuda", "CPU", None, False, "f16"),  # float16 graphs
    ("onnxruntime", False, "float16", "cuda", "CPU", None, False, "f16"),
    ("torch", True, None, "cpu", "CPU", None, True, None),
]


@pytest.mark.parametrize("backend,half,dtype,provider,ov_device,override,bf16,want", GRAPH_PRECISIONS)
def test_half_means_the_same_on_every_backend(monkeypatch, backend, half, dtype, provider, ov_device, override, bf16,
                                              want):
    cpu_features(monkeypatch, bf16=bf16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert api.graph_precision(backend, half, dtype, provider, ov_device, override) == want
        if backend != "torch":
            assert api.run_precision(backend, "cpu", half, dtype, provider, ov_device, override) == want


def test_run_precision_of_torch_follows_the_cpu_and_the_warnings_say_why(monkeypatch):
    import xpu.dtype
    cpu_features(monkeypatch, bf16=True, amx=True)
    assert api.run_precision("torch", "cpu", half=True) == "bf16"
    assert api.run_precision("torch", "cpu") == "f32"
    cpu_features(monkeypatch, bf16=False)
    xpu.dtype._WARNED.discard("half-cpu")
    with pytest.warns(UserWarning, match="running float32"):
        assert api.run_precision("torch", "cpu", half=True) == "f32"
    assert api.run_precision("torch", "cpu", dtype="bfloat16") == "bf16"
    xpu.dtype._WARNED.discard("half-ort-cpu")
    with pytest.warns(UserWarning, match="ONNX Runtime's cpu provider computes float32.*--backend openvino"):
        assert api.graph_precision("onnxruntime", True) == "f32"
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        api.graph_precision("openvino", override="int4")
    with pytest.raises(ValueError, match="int8 weights are an OpenVINO precision: use --backend openvino"):
        api.graph_precision("onnxruntime", override="int8")


def test_threads_are_set_once_and_passed_to_the_graph_runtimes(models_dir):
    tts = api.TextToSpeech(models_dir=models_dir, device="cpu", preload=False, threads=1)
    assert tts.threads == 1 and torch.get_num_threads() == 1
    assert api.backend_options("openvino", None) == {"device": "CPU", "precision": "f32"}
    graphs = api.TextToSpeech(models_dir=models_dir, device="cpu", preload=False, threads=1, backend="openvino")
    assert graphs.models.backend_options["threads"] == 1
