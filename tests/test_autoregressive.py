"""UnifiedVoice: checkpoint layout, parity with the original (fixtures from tests/parity/make_autoregressive_fixtures.py),
the decode loop (cache vs recompute, stop handling, chunking, OOM retry) and the sampling filters."""
import json

import pytest
import torch

from conftest import PARITY_FIXTURES, load_parity_fixture
from tortoise.models.autoregressive import UnifiedVoice, released_to_ours
from tortoise.utils import sampling

ATOL = 1e-5  # fp32, relative to outputs of scale ~1 (checked per tensor below)


@pytest.fixture(scope="module")
def fx():
    return load_parity_fixture("autoregressive", "tiny.pt")


def build(fx, biased=False, **post_init):
    model = UnifiedVoice(**fx["config"])
    model.load_state_dict(fx["state_dict"], strict=True)
    if biased:
        with torch.no_grad():
            model.mel_head.bias[model.stop_mel_token] += fx["stop_bias"]
    model.post_init_gpt2_config(**post_init)
    return model


def close(a, b, atol=ATOL):
    scale = max(1.0, b.abs().max().item())
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= atol * scale, f"max abs error {err} > {atol * scale}"


# -- checkpoint layout ----------------------------------------------------------------------------------------------

def test_released_state_dict_keys_and_shapes_equal_original():
    ref = json.loads((PARITY_FIXTURES / "autoregressive" / "released_keys.json").read_text())
    with torch.device("meta"):
        ours = UnifiedVoice(**ref["config"])
    assert [[k, list(v.shape)] for k, v in ours.state_dict().items()] == ref["keys"]


def test_key_map_drops_exactly_the_legacy_buffers_and_aliases():
    ref = json.loads((PARITY_FIXTURES / "autoregressive" / "released_keys.json").read_text())
    assert {k.rsplit(".", 1)[1] for k, _, _ in ref["non_persistent_buffers"]} == {"bias", "masked_bias"}
    legacy = {k: (torch.tensor(-1e4) if k.endswith("masked_bias") else torch.ones(1, 1, 6, 6, dtype=torch.uint8).tril())
              for k, _, _ in ref["non_persistent_buffers"]}
    aliases = {k: torch.zeros(1) for k, _ in ref["added_by_post_init_gpt2_config"]}
    assert aliases and all(k.startswith(("inference_model.", "gpt.wte.")) for k in aliases)
    kept = {"mel_head.bias": torch.zeros(3)}
    assert released_to_ours({**legacy, **aliases, **kept}).keys() == kept.keys()


def test_released_format_checkpoint_loads_strictly(fx):
    """A state dict as older transformers saved it (causal-mask buffers) plus the original's post-init aliases."""
    sd = dict(fx["state_dict"])
    n = 8
    for i in range(fx["config"]["layers"]):
        sd[f"gpt.h.{i}.attn.bias"] = torch.ones(1, 1, n, n, dtype=torch.uint8).tril()
        sd[f"gpt.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    sd["gpt.wte.weight"] = sd["mel_embedding.weight"]
    sd["inference_model.lm_head.1.weight"] = sd["mel_head.weight"]
    model = UnifiedVoice(**fx["config"])
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.mel_head.weight, fx["state_dict"]["mel_head.weight"])
    bad = dict(sd, **{"gpt.h.0.attn.bias": torch.ones(1, 1, n, n)})
    with pytest.raises(ValueError, match="causal-mask"):
        model.load_state_dict(bad)
    with pytest.raises(RuntimeError, match="Unexpected"):
        model.load_state_dict(dict(sd, extra_key=torch.zeros(1)))


# -- teacher-forced parity --------------------------------------------------------------------------------------------

def test_conditioning_latents_match_original(fx):
    model = build(fx)
    with torch.no_grad():
        close(model.get_conditioning(fx["mels"]), fx["cond"])
        close(model.get_conditioning(fx["mels3d_input"]), fx["mels3d_cond"])


def test_teacher_forced_outputs_match_original(fx):
    model = build(fx)
    cond_b = fx["cond"].repeat(2, 1)
    args = (cond_b, fx["text2"], fx["text_lengths"], fx["codes"], fx["wav_lengths"])
    with torch.no_grad():
        loss_text, loss_mel, mel_logits = model(*args)
        close(loss_text, fx["loss_text"])
        close(loss_mel, fx["loss_mel"])
        close(mel_logits, fx["mel_logits"])
        close(model(*args, return_latent=True), fx["latents_clip"])
        close(model(*args, text_first=False)[2], fx["text_first_false_mel_logits"])
        close(model(*args, return_attentions=True)[1], fx["attention_layer1"])
        api = model(cond_b, fx["text"].repeat(2, 1), torch.tensor([10]), fx["codes"],
                    torch.tensor([fx["codes"].shape[1] * 1024]), return_latent=True, clip_inputs=False)
        close(api, fx["latents_api"])


# -- decoding parity --------------------------------------------------------------------------------------------------

DECODE_CASES = {
    "greedy": (dict(do_sample=False, max_generate_length=12), 0),
    "greedy_penalty": (dict(do_sample=False, repetition_penalty=2.0, max_generate_length=12), 0),
    "sampled": (dict(do_sample=True, top_p=.8, temperature=.8, repetition_penalty=2.0, length_penalty=1.0,
                     num_return_sequences=4, max_generate_length=16), 1234),
    "sampled_no_topk": (dict(do_sample=True, top_p=.8, temperature=.8, repetition_penalty=2.0, length_penalty=1.0,
                             top_k=0, num_return_sequences=3, max_generate_length=10), 7),
    "typical": (dict(do_sample=True, top_p=.8, temperature=.8, repetition_penalty=2.0, length_penalty=1.0,
                     typical_sampling=True, typical_mass=.9, num_return_sequences=2, max_generate_length=10), 11),
    "input_tokens": (dict(do_sample=True, top_p=.8, temperature=.8, repetition_penalty=2.0, length_penalty=1.0,
                          input_tokens=torch.tensor([[5, 77, 300]]), num_return_sequences=2,
                          max_generate_length=8), 3),
}

# (our post_init settings, the original's kv_cache whose codes they must equal)
DECODE_MODES = {
    "cached": (dict(kv_cache=True), 1),
    "recompute": (dict(kv_cache=False), 0),
    "cached_contiguous": (dict(kv_cache=True, position_mode="contiguous"), 0),
}


@pytest.mark.parametrize("biased", [False, True], ids=["plain", "stop_biased"])
@pytest.mark.parametrize("mode", list(DECODE_MODES))
def test_decoded_codes_equal_original(fx, mode, biased):
    post_init, orig_kv = DECODE_MODES[mode]
    model = build(fx, biased=biased, **post_init)
    for name, (kwargs, seed) in DECODE_CASES.items():
        torch.manual_seed(seed)
        ours = model.inference_speech(fx["cond"], fx["text"], **kwargs)
        ref = fx["decode"][f"{name}{'_biased' if biased else ''}_kv{orig_kv}"]
        assert ours.dtype == ref.dtype and torch.equal(ours, ref), f"{name}: {ours.tolist()} != {ref.tolist()}"


def test_stop_biased_fixture_exercises_per_row_stop(fx):
    ref = fx["decode"]["sampled_biased_kv1"]
    stop = fx["config"]["stop_mel_token"]
    first_stop = [(row == stop).nonzero()[0].item() if (row == stop).any() else None for row in ref]
    assert None in first_stop and len({s for s in first_stop if s is not None}) > 1
    for row, s in zip(ref, first_stop):  # rows are frozen (stop-padded) after they stop
        if s is not None:
            assert (row[s:] == stop).all()


@pytest.mark.parametrize("position_mode", ["contiguous", "shifted"])
def test_cached_decode_equals_recompute(fx, position_mode):
    codes = []
    for kv in (True, False):
        model = build(fx, biased=True, kv_cache=kv, position_mode=position_mode)
        torch.manual_seed(99)
        codes.append(model.inference_speech(fx["cond"], fx["text"], do_sample=True, temperature=.9, top_p=.9,
                                            repetition_penalty=1.5, num_return_sequences=5, max_generate_length=20))
    assert torch.equal(codes[0], codes[1])


# -- batching, errors, half ----------------------------------------------------------------------------------------

def test_prefill_step_loop_is_the_decode_loop(fx):
    """inference_speech is prefill + the n-token loop; the loop's callback sees every step, and the streaming view
    (tokens with their latents) gives the same codes and the latents the latent pass computes for them."""
    model = build(fx, kv_cache=True, position_mode="contiguous")
    kw = dict(do_sample=True, top_p=.8, temperature=.8, repetition_penalty=2.0)
    torch.manual_seed(3)
    ref = model.inference_speech(fx["cond"], fx["text"], num_return_sequences=2, max_generate_length=9, **kw)
    torch.manual_seed(3)
    state = model.prefill(fx["cond"], fx["text"], num_return_sequences=2, max_generate_length=9)
    seen_steps = []
    codes = model.decode(state, sampling.SamplingOptions.from_generate_kwargs(**kw),
                         callback=lambda step, tokens: seen_steps.append((step, tokens.shape)))
    assert torch.equal(codes, ref) and [s for s, _ in seen_steps] == list(range(1, codes.shape[1] + 1))
    torch.manual_seed(3)
    state = model.prefill(fx["cond"], fx["text"], max_generate_length=9)
    pairs = list(model.tokens(state, sampling.SamplingOptions.from_generate_kwargs(**kw)))
    row = torch.stack([t for t, _ in pairs], dim=1)[0]
    assert torch.is_grad_enabled()  # nothing held open across the generator's yields
    latents = torch.stack([lat[0] for _, lat in pairs])
    with torch.no_grad():
        full = model(fx["cond"], fx["text"], torch.tensor([fx["text"].shape[1]]), row[None],
                     torch.tensor([row.shape[0] * 1024]), return_latent=True, clip_inputs=False)[0]
    close(latents, full[:latents.shape[0]], atol=1e-5)


def test_bad_arguments_raise_with_the_fix(fx):
    model = build(fx, kv_cache=True)
    with pytest.raises(TypeError, match="unsupported generate keyword"):
        model.inference_speech(fx["cond"], fx["text"], output_scores=True)
    with pytest.raises(ValueError, match="num_beams"):
        model.inference_speech(fx["cond"], fx["text"], num_beams=2)
    with pytest.raises(ValueError, match="max_generate_length"):
        model.inference_speech(fx["cond"], fx["text"], max_generate_length=1000)
    with pytest.raises(ValueError, match="position_mode"):
        model.post_init_gpt2_config(position_mode="nope")


def test_half_weights_decode_in_their_dtype_with_float32_norm_and_heads(fx):
    """half: the weights are cast once (bfloat16 here: any CPU runs it) and the dtype follows the tensors, no
    autocast; the final norm and the heads stay float32, so logits and latents are float32."""
    model = build(fx, kv_cache=True, half=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.mel_head.weight.dtype == torch.float32
    assert model.final_norm.weight.dtype == torch.float32
    dtypes = []
    model.gpt.h[0].attn.c_attn.register_forward_hook(lambda mod, args, out: dtypes.append(out.dtype))
    torch.manual_seed(0)
    out = model.inference_speech(fx["cond"], fx["text"], num_return_sequences=2, max_generate_length=6,
                                 do_sample=True, top_p=.8, temperature=.8)
    assert out.shape[0] == 2 and out.dtype == torch.long and 1 <= out.shape[1] <= 6
    assert dtypes and set(dtypes) == {torch.bfloat16} and not torch.is_autocast_enabled("cpu")
    args = (fx["cond"].repeat(2, 1), fx["text"].repeat(2, 1), torch.tensor([10]), fx["codes"],
            torch.tensor([fx["codes"].shape[1] * 1024]))
    with torch.no_grad():
        latents = model(*args, return_latent=True, clip_inputs=False)
    assert latents.dtype == torch.float32
    drift = ((latents - fx["latents_api"]).norm() / fx["latents_api"].norm()).item()
    assert drift < 0.05  # bf16 weights and activations: close to fp32, not equal
    with pytest.raises(ValueError, match="dtype"):
        model.post_init_gpt2_config(half=True)


# -- sampling filters (closed-form answers) ---------------------------------------------------------------------------

def test_repetition_penalty_divides_positive_and_multiplies_negative():
    scores = torch.tensor([[2.0, -2.0, 3.0]])
    seen = torch.tensor([[True, True, False]])
    assert torch.equal(sampling.apply_repetition_penalty(scores, seen, 2.0), torch.tensor([[1.0, -4.0, 3.0]]))


def test_top_k_and_top_p_keep_the_expected_tokens():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = sampling.apply_top_p(logits, 0.8).isfinite()
    assert kept.tolist() == [[True, True, False, False]]  # 0.5 + 0.3 reach 0.8; the 0.2 tail is dropped
    assert sampling.apply_top_k(logits, 3).isfinite().tolist() == [[True, True, True, False]]
    assert sampling.apply_top_p(logits, 0.01).isfinite().sum() == 1  # the best token is always kept


# -- CPU prepacked weights --------------------------------------------------------------------------------------------

@pytest.mark.skipif(not __import__("tortoise.models.gpt2", fromlist=["can_prepack"]).can_prepack(),
                    reason="this torch build has no oneDNN")
def test_prepacked_linear_matches_addmm_and_is_dropped_when_the_weight_changes():
    from tortoise.models.gpt2 import Conv1D
    torch.manual_seed(0)
    layer = Conv1D(64, 96)
    x = torch.randn(5, 64)
    with torch.no_grad():
        plain = layer(x)
        layer.prepack(5)
        assert layer._use_packed(x)
        close(layer(x), plain, atol=1e-6)
        assert not layer._use_packed(x[:1])  # one row stays on addmm
        layer.weight.mul_(2)  # in-place change: the packed copy is stale
        close(layer(x), x @ layer.weight + layer.bias, atol=1e-6)
        assert layer._packed is None


def test_half_weights_on_a_cpu_keep_a_float32_cache_and_give_the_same_codes_as_a_half_cache(fx):
    """On a CPU the KV cache stays float32 under bf16 weights (bf16 attention at decode shapes is slower there); the
    step's output keeps the weights' dtype, and greedy codes equal those of a bf16 cache on the tiny model."""
    from tortoise.models import gpt2
    model = build(fx, biased=True, kv_cache=True, half=torch.bfloat16)
    assert gpt2.cache_dtype(torch.bfloat16, "cpu") == torch.float32
    assert gpt2.cache_dtype(torch.float16, "cuda") == torch.float16 and gpt2.cache_dtype(torch.float32, "cpu") == \
        torch.float32
    with torch.no_grad():
        state = model.prefill(fx["cond"].bfloat16(), fx["text"], 2, 12)
        assert all(t.dtype == torch.float32 for t in state.cache.tensors)
        fp32_cache = model.inference_speech(fx["cond"].bfloat16(), fx["text"], do_sample=False,
                                            num_return_sequences=1, max_generate_length=12)
        real = gpt2.cache_dtype
        gpt2.cache_dtype = lambda dtype, device: dtype  # the half cache a GPU would hold
        try:
            half_cache = model.inference_speech(fx["cond"].bfloat16(), fx["text"], do_sample=False,
                                                num_return_sequences=1, max_generate_length=12)
        finally:
            gpt2.cache_dtype = real
    assert torch.equal(fp32_cache, half_cache)


def test_packed_rows_by_dtype():
    """fp32 keeps addmm for one row (memory bound, at the floor); bf16 takes the packed weight from one row (addmm's
    bf16 kernel reads the plain layout at a fraction of the bandwidth: the batch-1 step of --half)."""
    from tortoise.models.gpt2 import packed_rows
    assert packed_rows(torch.float32) == (2, 256) and packed_rows(torch.bfloat16) == (1, 256)
    assert packed_rows(torch.float16) == (2, 256)


@pytest.mark.skipif(not __import__("tortoise.models.gpt2", fromlist=["can_prepack"]).can_prepack(torch.bfloat16),
                    reason="oneDNN packs bf16 only on CPUs with native bf16 (AVX512-BF16 / AMX)")
def test_bf16_batch_one_decode_runs_on_the_packed_weights_with_addmms_codes(fx):
    from tortoise.models.gpt2 import Conv1D
    torch.manual_seed(0)
    layer = Conv1D(64, 96).to(torch.bfloat16)
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        plain = layer(x)
        layer.prepack(1)
        assert layer._use_packed(x)
        close(layer(x).float(), plain.float(), atol=2e-2)
    codes = []
    for prepack in (False, True):
        model = build(fx, biased=True, kv_cache=True, half=torch.bfloat16, prepack=prepack)
        with torch.no_grad():
            codes.append(model.inference_speech(fx["cond"].bfloat16(), fx["text"], do_sample=False,
                                                num_return_sequences=1, max_generate_length=12))
        assert any(m._packed is not None for m in model.gpt.modules() if hasattr(m, "_packed")) == prepack
    assert torch.equal(codes[0], codes[1])


def test_decode_with_and_without_prepack_give_the_same_codes(fx):
    codes = []
    for prepack in (True, False):
        model = build(fx, biased=True, kv_cache=True, prepack=prepack)
        torch.manual_seed(5)
        codes.append(model.inference_speech(fx["cond"], fx["text"], num_return_sequences=4, max_generate_length=12,
                                            do_sample=True, top_p=.8, temperature=.8, repetition_penalty=2.0))
    assert torch.equal(codes[0], codes[1])


def test_int8_mode_is_close_to_fp32_and_can_be_turned_off(fx):
    model = build(fx, kv_cache=True, int8="dynamic")
    args = (fx["cond"].repeat(2, 1), fx["text"].repeat(2, 1), torch.tensor([10]), fx["codes"],
            torch.tensor([fx["codes"].shape[1] * 1024]))
    with torch.no_grad():
        latents = model(*args, return_latent=True, clip_inputs=False)
        drift = ((latents - fx["latents_api"]).norm() / fx["latents_api"].norm()).item()
        assert 0 < drift < 0.1  # quantized: not exact, but close
        out = model.inference_speech(fx["cond"], fx["text"], num_return_sequences=2, max_generate_length=6,
                                     do_sample=True, top_p=.8, temperature=.8)
        assert out.shape[0] == 2
        model.post_init_gpt2_config(kv_cache=True, int8=False)
        close(model(*args, return_latent=True, clip_inputs=False), fx["latents_api"])


def test_weight_only_int8_serves_the_decode_steps_closer_to_fp32_than_dynamic(fx):
    """Weight-only int8 (bf16 activations) on the decode steps: a step's logits drift less from fp32 than dynamic
    int8's; the latent pass (more than INT8_WEIGHT_ROWS rows, as a real prompt pass) stays float32, exact."""
    from tortoise.models import gpt2
    assert gpt2.int8_mode() == ("weight" if gpt2.can_prepack(torch.bfloat16) else "dynamic")
    fp32 = build(fx, biased=True, kv_cache=True)
    drifts = {}
    for mode in gpt2.INT8_MODES:
        model = build(fx, biased=True, kv_cache=True, int8=mode)
        with torch.no_grad():
            want, got = fp32.prefill(fx["cond"], fx["text"], 2, 12), model.prefill(fx["cond"], fx["text"], 2, 12)
            token = want.logits.argmax(-1)
            fp32.step(want, token)
            model.step(got, token)
            drifts[mode] = ((got.logits - want.logits).norm() / want.logits.norm()).item()
            args = (fx["cond"].repeat(2, 1), fx["text"].repeat(2, 1), torch.tensor([10]), fx["codes"],
                    torch.tensor([fx["codes"].shape[1] * 1024]))
            if mode == "weight":
                close(model(*args, return_latent=True, clip_inputs=False), fx["latents_api"])
    assert 0 < drifts["weight"] < drifts["dynamic"] < 0.1, drifts
    with pytest.raises(ValueError, match="int8 must be"):
        build(fx, kv_cache=True, int8="int4")


# -- half weights on a CPU: small steps from a float32 copy where that measured faster ---------------------------------

def _fake_timer(float_wins_up_to):
    """A timer standing in for the clock: the float32 copy 'measures' faster up to ``float_wins_up_to`` rows."""
    seen = []

    def timer(layers, rows, use_float):
        seen.append((rows, use_float))
        return (0.5 if rows <= float_wins_up_to else 2.0) if use_float else 1.0
    return timer, seen


@pytest.mark.parametrize("wins, expected", [(0, 0), (1, 1), (2, 2), (8, 4)])
def test_half_row_plan_keeps_the_float_copy_only_where_it_measured_faster(wins, expected):
    from tortoise.models import gpt2
    torch.manual_seed(0)
    layers = [gpt2.Conv1D(32, 48).to(torch.bfloat16) for _ in range(3)]
    timer, seen = _fake_timer(wins)
    plan = gpt2.plan_half_rows(layers, timer)
    assert plan.float_rows == expected
    assert all(layer.float_rows == expected and (layer._float is not None) == bool(expected) for layer in layers)
    # timing stops at the first row count where the half kernels hold their own
    assert [r for r, _ in seen[::2]] == list(gpt2.HALF_ROWS_TIMED[:min(expected + 1, len(gpt2.HALF_ROWS_TIMED))])
    assert ("float32 copy" in plan.describe()) == bool(expected)


def test_half_row_plan_leaves_float32_weights_alone():
    from tortoise.models import gpt2
    layers = [gpt2.Conv1D(32, 48)]
    assert gpt2.plan_half_rows(layers, _fake_timer(4)[0]).float_rows == 0 and layers[0]._float is None


def test_half_steps_from_the_float_copy_compute_the_half_weights_in_float32():
    """The copy is the half weights, exactly, widened: a one-row step equals fp32 arithmetic on the bf16 weights,
    more rows than planned take the half kernels, and a changed weight drops the stale copy."""
    from tortoise.models import gpt2
    torch.manual_seed(0)
    layer = gpt2.Conv1D(64, 96).to(torch.bfloat16)
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        layer.keep_float_copy(1)
        expected = (torch.addmm(layer.bias.float(), x.float(), layer.weight.float())).bfloat16()
        assert torch.equal(layer(x), expected)
        assert not layer._use_float(x.expand(2, -1))
        layer.weight.mul_(2)
        assert not layer._use_float(x) and layer._float is None and layer.float_rows == 0


def test_the_decode_loop_plans_half_rows_once_and_gives_the_same_codes_either_way(fx, monkeypatch):
    """--half on a CPU: the first decode measures (here: a timer that makes the copy win at one row), later decodes
    reuse the plan; a one-row step from the copy gives the half kernels' logits (to bf16 rounding of the hidden
    states: both accumulate in float32)."""
    from tortoise.models import gpt2
    if not gpt2.can_prepack(torch.bfloat16):
        pytest.skip("oneDNN packs bf16 only on CPUs with native bf16 (AVX512-BF16 / AMX)")
    model = build(fx, biased=True, kv_cache=True, half=torch.bfloat16)
    calls = []
    timer = _fake_timer(1)[0]
    monkeypatch.setattr(gpt2, "_time_linears", lambda *a, **k: calls.append(a[1]) or timer(*a, **k))
    monkeypatch.setattr(gpt2.GPT2Model.plan_half_rows, "__defaults__", (gpt2._time_linears,))
    cond = fx["cond"].bfloat16()

    def first_steps():
        state = model.prefill(cond, fx["text"], 1, 12)
        model.step(state, torch.tensor([5]))
        return state.logits

    with torch.no_grad():
        with_copy = first_steps()
        assert model.gpt.half_plan.float_rows == 1 and len(calls) == 4
        first_steps()
        assert len(calls) == 4  # decided once
        for module in model.gpt.modules():
            if isinstance(module, gpt2.Conv1D):
                module.keep_float_copy(0)
        half_kernels = first_steps()
    close(with_copy, half_kernels, atol=0.05)
    assert not torch.equal(with_copy, torch.zeros_like(with_copy))
