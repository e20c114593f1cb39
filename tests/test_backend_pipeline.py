"""The graph backends inside the pipeline: TextToSpeech(backend=...), tortoise-tts --backend, TORTOISE_BACKEND.

The same tiny checkpoints (conftest's ``export_models``) run as torch modules and as exported graphs on ONNX Runtime
and OpenVINO (exported and verified on first use, cached beside the checkpoints, where test_export_backends finds
them too); sampling stays in torch, so with the same seed the codes are the same and the waveform equals torch's
within 1e-3.
"""
import os
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from tortoise import api, pipeline
from tortoise.api import model_identity
from tortoise.options import ModelOptions
from xpu.testing import cpu_features

TEXT = "Hello there, world."
FAST = dict(num_autoregressive_samples=2, max_mel_tokens=16, diffusion_iterations=3, sampler="ddim")


@pytest.fixture(scope="module")
def codes_seen(monkeypatch_module):
    seen = []
    real = pipeline.rank

    def spy(models, text_tokens, codes, *a, **kw):
        seen.append(codes.clone())
        return real(models, text_tokens, codes, *a, **kw)
    monkeypatch_module.setattr(pipeline, "rank", spy)
    return seen


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="module")
def reference(export_models, codes_seen):
    tts = api.TextToSpeech(models_dir=export_models, device="cpu", autoregressive_batch_size=2,
                           enable_redaction=False)
    wav = tts.tts_with_preset(TEXT, "ultra_fast", verbose=False, use_deterministic_seed=4, **FAST)
    return wav, codes_seen[-1]


@pytest.mark.parametrize("native_bf16", [False, True], ids=["avx2-cpu", "bf16-cpu"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_pipeline_on_a_graph_backend_equals_torch(export_models, reference, codes_seen, backend, native_bf16,
                                                  monkeypatch):
    """Without --half every backend computes f32 whatever the CPU (OpenVINO is told so: left to itself it runs bf16
    on CPUs with native bf16), so a seed draws torch's codes. The CPU kind is faked at the device layer; OpenVINO
    sees the real one, which is why the f32 hint must be explicit."""
    cpu_features(monkeypatch, bf16=native_bf16)
    tts = api.TextToSpeech(models_dir=export_models, device="cpu", autoregressive_batch_size=2,
                           enable_redaction=False, backend=backend)
    assert tts.precision == "f32" and tts.autoregressive.graphs.transformer()[0].precision == "f32"
    assert type(tts.autoregressive).__module__ == "tortoise.backends.networks"  # graphs, not torch modules
    assert type(tts.diffusion).__module__ == "tortoise.backends.networks"
    wav = tts.tts_with_preset(TEXT, "ultra_fast", verbose=False, use_deterministic_seed=4, **FAST)
    ref_wav, ref_codes = reference
    assert torch.equal(codes_seen[-1], ref_codes)  # sampling in torch on the graphs' logits: the same codes
    assert wav.shape == ref_wav.shape
    torch.testing.assert_close(wav, ref_wav, atol=1e-3, rtol=0)


def test_streaming_on_a_graph_backend(export_models):
    kw = dict(verbose=False, use_deterministic_seed=2, max_mel_tokens=16, stream_chunk_size=8)
    ref = torch.cat(list(api.TextToSpeech(models_dir=export_models, device="cpu", preload=False)
                         .tts_stream(TEXT, **kw)))
    tts = api.TextToSpeech(models_dir=export_models, device="cpu", preload=False, backend="onnxruntime")
    wav = torch.cat(list(tts.tts_stream(TEXT, **kw)))
    assert wav.shape == ref.shape
    torch.testing.assert_close(wav, ref, atol=1e-3, rtol=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_cli_speaks_on_a_backend(export_models, tmp_path, backend):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "tortoise.cli", "--models_dir", str(export_models), "-p",
                           "ultra_fast", "--num_autoregressive_samples", "2", "--steps", "2", "--max_mel_tokens", "16",
                           "--seed", "1", "-q", "--backend", backend, "-O", str(out), "Hello there."],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    audio, rate = sf.read(str(out / "random_00_00.wav"))
    assert rate == 24000 and audio.size > 0


def test_backend_from_the_environment_and_bad_names(export_models, monkeypatch):
    monkeypatch.setenv(api.BACKEND_ENV, "OpenVINO")
    assert api.TextToSpeech(models_dir=export_models, device="cpu", preload=False).backend == "openvino"
    monkeypatch.setenv(api.BACKEND_ENV, "tensorrt")
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'"):
        api.TextToSpeech(models_dir=export_models, device="cpu", preload=False)


def test_a_missing_runtime_is_one_line_naming_the_extra(export_models, tmp_path):
    """The runtime made unimportable for real (a None entry in sys.modules makes `import openvino` fail)."""
    code = ("import sys; sys.modules['openvino'] = None; from tortoise.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "--models_dir", str(export_models), "--backend",
                           "openvino", "-O", str(tmp_path / "o"), "Hi."], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "pip install 'openvino>=2024.6' 'onnx>=1.17' 'onnxscript>=0.3'" in lines[0]  # the extra's packages
    assert not (tmp_path / "o").exists()


def test_a_backend_change_makes_earlier_clips_stale(export_models):
    base = ModelOptions(models_dir=str(export_models))
    torch_id = model_identity(base)
    assert model_identity(base.replace(backend="openvino")) != torch_id
    assert model_identity(base.replace(backend="torch")) == torch_id
    assert model_identity(base.replace(backend="openvino", backend_precision="bf16")) != \
        model_identity(base.replace(backend="openvino", backend_precision="f32"))


def _openvino_runs_bf16():
    """Whether OpenVINO's CPU plugin runs a bf16 hint as bf16 here: natively (AVX512-BF16, AMX) or emulated on other
    AVX512 cores (an Ice Lake Xeon); on AVX2 it runs f32."""
    caps = torch.cpu.get_capabilities()
    return any(caps.get(f) for f in ("avx512_bf16", "amx_bf16", "avx512_bw"))


def test_openvino_int8_weights_speak_and_say_so(export_models):
    """--backend_precision int8 on OpenVINO: the AR transformer with int8 weights (its own verified IR), every graph
    computing in f32; the precision is reported and the audio is finite."""
    tts = api.TextToSpeech(models_dir=export_models, device="cpu", autoregressive_batch_size=2,
                           enable_redaction=False, backend="openvino", backend_precision="int8")
    assert tts.precision == "int8"
    wav = tts.tts_with_preset(TEXT, "ultra_fast", verbose=False, use_deterministic_seed=4, **FAST)
    transformer, directory = tts.autoregressive.graphs.transformer()
    assert transformer.precision == "int8" and "int8" in (directory.parent / "fingerprint.json").read_text()
    assert torch.isfinite(wav).all() and wav.numel() > 0


def test_each_stage_gives_back_its_graphs_memory(export_models, monkeypatch):
    """A compiled graph keeps its buffers (and OpenVINO its decode cache) until told: every stage of the pipeline
    tells its graph networks when it ends, so what a stage used is not held through the later ones."""
    from tortoise.backends import networks
    released = []
    real = networks.GraphSet.release
    monkeypatch.setattr(networks.GraphSet, "release", lambda self: (released.append(self.network), real(self))[1])
    tts = api.TextToSpeech(models_dir=export_models, device="cpu", autoregressive_batch_size=2,
                           enable_redaction=False, backend="openvino")
    wav = tts.tts_with_preset(TEXT, "ultra_fast", verbose=False, use_deterministic_seed=4, **FAST)
    assert torch.isfinite(wav).all()
    assert {"autoregressive", "clvp", "diffusion", "vocoder"} <= set(released)
    assert released.count("autoregressive") >= 2  # after the sampling and after the latent pass
    transformer, _ = tts.autoregressive.graphs.transformer()
    assert transformer._live is None  # the decode's cache is not kept after the stage


def test_half_on_openvino_runs_the_cpus_half_and_says_what_ran(export_models, reference, codes_seen, monkeypatch):
    """--half on OpenVINO asks for bf16 on a CPU with native bf16 (faked at the device layer) and the decoder reports
    what OpenVINO compiled (bf16 where its CPU plugin runs it: an AVX2 CPU runs the bf16 hint as f32); the audio
    is finite and has the reference's length budget. On a CPU without native bf16, --half is f32 and says so, as it
    does for torch, and draws torch's codes."""
    runs_bf16 = _openvino_runs_bf16()  # the real CPU's, read before faking it
    cpu_features(monkeypatch, bf16=True)
    tts = api.TextToSpeech(models_dir=export_models, device="cpu", autoregressive_batch_size=2,
                           enable_redaction=False, backend="openvino", half=True)
    assert tts.precision == "bf16"
    wav = tts.tts_with_preset(TEXT, "ultra_fast", verbose=False, use_deterministic_seed=4, **FAST)
    assert tts.autoregressive.graphs.transformer()[0].precision == ("bf16" if runs_bf16 else "f32")
    assert torch.isfinite(wav).all() and wav.numel() > 0

    cpu_features(monkeypatch, bf16=False)
    import xpu.dtype
    xpu.dtype._WARNED.discard("half-cpu")
    with pytest.warns(UserWarning, match="running float32"):
        tts = api.TextToSpeech(models_dir=export_models, device="cpu", autoregressive_batch_size=2,
                               enable_redaction=False, backend="openvino", half=True)
    assert tts.precision == "f32"
    wav = tts.tts_with_preset(TEXT, "ultra_fast", verbose=False, use_deterministic_seed=4, **FAST)
    assert torch.equal(codes_seen[-1], reference[1])
    torch.testing.assert_close(wav, reference[0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_unguided_diffusion_runs_its_own_graph_of_half_the_work(export_models, backend):
    """Samplers without guidance (the original's ultra_fast, cond_free=False) call the model itself: that is the
    unguided step graph (B items), not the guided one (2B items, half thrown away); both match torch's forward."""
    from tortoise import backends
    from tortoise.utils import checkpoints
    torch_net = checkpoints.load_model("diffusion", models_dir=export_models).eval()
    graph = backends.load("diffusion", export_models, backend)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, torch_net.in_channels, 40, generator=gen)
    t = torch.tensor([10.0, 500.0])
    emb = torch.randn(1, torch_net.model_channels, 40, generator=gen)
    with torch.no_grad():
        want = torch_net(x, t, precomputed_aligned_embeddings=emb.expand(2, -1, -1))
        want_uncond = torch_net(x, t, precomputed_aligned_embeddings=emb, conditioning_free=True)
    got = graph(x, t, precomputed_aligned_embeddings=emb)
    assert set(graph.graphs._runners) == {"diffusion_step_unguided"}
    torch.testing.assert_close(got, want, atol=1e-4 * want.abs().max().item(), rtol=0)
    got_uncond = graph(x, t, precomputed_aligned_embeddings=emb, conditioning_free=True)
    torch.testing.assert_close(got_uncond, want_uncond, atol=1e-4 * want_uncond.abs().max().item(), rtol=0)
