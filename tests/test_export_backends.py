"""tortoise-export and the ONNX Runtime / OpenVINO backends, on tiny random-weight models.

Every component is exported with dynamic axes (what the pipeline uses) and verified for both formats; the graph
objects then reproduce the torch networks: the same greedy (and seeded sampled) codes, stage outputs within 1e-3.
The models are conftest's ``export_models``: the vocoders, the HiFi-GAN decoder and the diffusion trunk are narrower /
shallower than the tiny models elsewhere (same architectures): exporting with symbolic shapes costs time per layer,
not per weight.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tortoise.export import cli, exporter
from tortoise.export.components import COMPONENTS, Shapes
from tortoise.export.exporter import ExportOptions, VerificationError, export

FORMATS = ("onnx", "openvino")
BACKEND_OF = {"onnx": "onnxruntime", "openvino": "openvino"}
SHORT_CLIPS = Shapes(cond_frames=40)


class Exports:
    """Each (component, format) exported once per session into one cache (OpenVINO reuses the ONNX graph)."""

    def __init__(self, models_dir, root):
        self.models_dir, self.root, self.results = models_dir, root, {}

    def get(self, component, fmt):
        if (component, fmt) not in self.results:
            self.results[component, fmt] = export(component, self.models_dir, fmt, output_dir=self.root,
                                                  options=ExportOptions(dynamic=True))
        return self.results[component, fmt]


@pytest.fixture(scope="session")
def exports(export_models, tmp_path_factory):
    # The default cache beside the checkpoints, shared with test_backend_pipeline (same graphs, exported once).
    return Exports(export_models, export_models / "exported")


def _load(network, exports, backend, **options):
    from tortoise.backends import load
    return load(network, exports.models_dir, backend, export_dir=exports.root, threads=1, **options)


def _torch(network, models_dir):
    from tortoise.export.exporter import load_network
    return load_network(network, models_dir)


# ---------------------------------------------------------------------------------------------------------------
# every component, both formats
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("component", [c for c in COMPONENTS if c != "bigvgan"])
def test_component_exports_and_verifies(exports, component, fmt):
    result = exports.get(component, fmt)
    assert result.verification == "passed" and result.path.is_file()
    assert result.path.name == ("model.onnx" if fmt == "onnx" else "model.xml")
    cases = {c.case for c in result.checks}
    assert cases == {"example", "other sizes"}  # dynamic: checked at a second set of sizes too
    outputs = {c.output for c in result.checks}
    assert outputs == set(COMPONENTS[component].outputs(_torch(COMPONENTS[component].network, exports.models_dir)))
    for check in result.checks:
        assert check.ok and check.max_rel <= 1e-4, check
    again = export(component, exports.models_dir, fmt, output_dir=exports.root, options=ExportOptions(dynamic=True))
    assert again.cached and again.path == result.path and again.checks == result.checks


def test_ar_transformer_is_one_graph_with_its_cache_in_place(exports):
    """The prompt, the steps and the latent pass share one graph (one copy of the weights); the step writes into the
    cache it is given: ONNX Runtime's buffers keep their address and hold every position written so far, OpenVINO
    keeps the cache as its state."""
    import numpy as np
    import openvino as ov
    from tortoise.runtimes.onnxruntime import OrtTransformer
    onnx_path = exports.get("ar_transformer", "onnx").path
    assert sorted(p.name for p in onnx_path.parent.glob("*.data")) == ["model.onnx.data"]
    assert (onnx_path.parent / "embeddings.npz").is_file()
    ort_t = OrtTransformer(onnx_path, threads=1)
    embeds = torch.randn(2, 7, 64)
    _, _, cache = ort_t.prompt(embeds[:1, :5])
    cache = cache.select([0, 0], capacity=7)
    buffers = [v.data_ptr() for v in cache.values]
    for j in (5, 6):
        ort_t.step(embeds[:, j:j + 1], cache)
    assert cache.length == 7 and [v.data_ptr() for v in cache.values] == buffers
    whole_sequence = torch.cat([embeds[:1, :5].expand(2, -1, -1), embeds[:, 5:]], 1)
    full = OrtTransformer(onnx_path, threads=1).prompt(whole_sequence)[2]
    for mine, whole in zip(cache.host_arrays(), full.host_arrays()):
        np.testing.assert_allclose(mine, whole, atol=1e-5)
    ort_t.step(embeds[:, :1], cache)  # past its capacity: the cache grows
    assert cache.length == 8 and cache.capacity >= 8

    model = ov.Core().read_model(str(exports.get("ar_transformer", "openvino").path))
    assert [p.get_any_name() for p in model.inputs] == ["embeds", "past_length", "beam_idx"]
    assert [p.get_any_name() for p in model.outputs] == ["hidden", "logits"]
    assert sorted(v.get_info().variable_id for v in model.get_variables()) == sorted(
        f"past.{i}.{kind}" for i in range(2) for kind in ("key", "value"))
    # The CPU plugin fused each layer's ReadValue -> Gather -> Concat -> attention -> Assign into one attention node
    # that owns its cache: no concatenation or row gather per cache variable is left in what runs.
    from tortoise.runtimes.openvino import OvTransformer
    runtime = OvTransformer(exports.get("ar_transformer", "openvino").path, threads=1).runner.compiled
    kinds = [n.get_rt_info()["layerType"].astype(str) for n in runtime.get_runtime_model().get_ops()]
    assert kinds.count("ScaledDotProductAttention") == 2 and kinds.count("Concatenation") < 4
    assert kinds.count("Gather") < 4


def test_cache_layout(exports):
    onnx = exports.get("clvp_text", "onnx").path
    xml = exports.get("clvp_text", "openvino").path
    entry = onnx.parent.parent
    assert xml.parent.parent == entry  # one fingerprint: the IR was converted from the verified ONNX graph
    fingerprint = json.loads((entry / "fingerprint.json").read_text())
    assert fingerprint["component"] == "clvp_text" and fingerprint["shapes"] == "dynamic"
    assert set(fingerprint["versions"]) == {"tortoise-tts-xpu", "torch", "onnx", "onnxscript"}
    assert fingerprint["versions"]["torch"] == torch.__version__
    assert list(onnx.parent.glob("verified-onnxruntime-*.json"))
    assert xml.parent.name.startswith("openvino-") and (xml.parent / "verified.json").is_file()
    assert not list(entry.parent.glob(".*tmp*"))  # no temporary directory left behind


# ---------------------------------------------------------------------------------------------------------------
# the graph objects reproduce the torch networks
# ---------------------------------------------------------------------------------------------------------------
def _ar_pair(exports, backend, position_mode):
    """The torch AR model and its graphs on ``backend``, both with the cached loop's ``position_mode``."""
    ar = _torch("autoregressive", exports.models_dir)
    graph = _load("autoregressive", exports, backend)
    for model in (ar, graph):
        model.post_init_gpt2_config(kv_cache=True, position_mode=position_mode)
    return ar, graph


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_greedy_and_seeded_codes_equal_torch(exports, backend):
    ar, graph = _ar_pair(exports, backend, "contiguous")
    gen = torch.Generator().manual_seed(7)
    cond = torch.randn(1, ar.model_dim, generator=gen)
    text = torch.randint(1, 200, (1, 15), generator=gen, dtype=torch.int32)  # the pipeline's IntTensor
    with torch.no_grad():
        want = ar.inference_speech(cond, text, do_sample=False, num_return_sequences=3, max_generate_length=40)
    got = graph.inference_speech(cond, text, do_sample=False, num_return_sequences=3, max_generate_length=40)
    assert torch.equal(got, want)
    kwargs = dict(do_sample=True, top_p=0.8, temperature=0.8, repetition_penalty=2.0, num_return_sequences=4,
                  max_generate_length=30)
    torch.manual_seed(11)
    with torch.no_grad():
        want = ar.inference_speech(cond, text, **kwargs)
    torch.manual_seed(11)
    got = graph.inference_speech(cond, text, **kwargs)
    assert torch.equal(got, want)  # sampling stays in torch: the same random stream


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_decode_state_api_and_original_position_rule(exports, backend):
    """UnifiedVoice's prefill / step / tokens on the graphs, with the cached-path quirk (positions one ahead)."""
    from tortoise.utils.sampling import SamplingOptions
    ar, graph = _ar_pair(exports, backend, "original")
    gen = torch.Generator().manual_seed(3)
    cond, text = torch.randn(1, ar.model_dim, generator=gen), torch.randint(1, 200, (1, 9), generator=gen)
    want, got = ar.prefill(cond, text, 2, 25), graph.prefill(cond, text, 2, 25)
    assert (got.n_mel, got.prompt_len, got.max_new) == (want.n_mel, want.prompt_len, want.max_new)
    assert torch.equal(got.prompt_ids, want.prompt_ids) and torch.equal(got.seen, want.seen)
    for _ in range(3):
        _close(got.logits, want.logits, 1e-4)
        _close(got.latent, want.latent, 1e-4)
        token = want.logits.argmax(-1)
        ar.step(want, token)
        graph.step(got, token)
    assert got.t == want.t == 3 and got.cache.length == want.prompt_len + 3
    greedy = SamplingOptions.from_generate_kwargs(do_sample=False)
    assert torch.equal(graph.decode(graph.prefill(cond, text, 1, 25), greedy), ar.decode(ar.prefill(cond, text, 1, 25),
                                                                                            greedy))
    with pytest.raises(ValueError, match="learned positions"):
        graph.prefill(cond, text, 1, graph.mel_positions)


def _close(got, want, tol=1e-3):
    err = (got.float() - want.float()).abs().max().item() / max(want.abs().max().item(), 1e-12)
    assert got.shape == want.shape and err <= tol, (tuple(got.shape), tuple(want.shape), err)


class BothDiffusions:
    """A sampler's model that runs the torch network and the graphs on the same inputs at every call, checks they
    agree within 1e-3 and continues with torch's output. (Chaining each one's own outputs is no test on random
    weights: at the first steps x0 = (x - eps) / sqrt(alpha_bar) saturates at +-1 for every element, so a 1e-7
    difference where x ~ eps flips a sign, and the next steps amplify it.)"""

    def __init__(self, torch_net, graphs):
        self.torch_net, self.graphs, self.calls = torch_net, graphs, 0

    def forward_guided(self, x, timesteps, **kwargs):
        want = self.torch_net.forward_guided(x, timesteps, **kwargs)
        got = self.graphs.forward_guided(x, timesteps, **kwargs)
        for g, w in zip(got, want):
            _close(g, w)
        self.calls += 1
        return want


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_stages_within_1e3_of_torch(exports, backend):
    """Conditioning, latent pass, CLVP scores, guided diffusion sampling, every vocoder: torch vs graphs."""
    from tortoise.utils.diffusion import make_diffuser, output_length
    models = exports.models_dir
    gen = torch.Generator().manual_seed(5)
    ar, g_ar = _torch("autoregressive", models), _load("autoregressive", exports, backend)
    mels = torch.randn(1, 2, 80, 120, generator=gen)
    _close(g_ar.get_conditioning(mels), ar.get_conditioning(mels))
    cond, text = ar.get_conditioning(mels), torch.randint(1, 200, (1, 12), generator=gen)
    codes = torch.randint(0, 8192, (2, 30), generator=gen)
    args = (cond.repeat(2, 1), text.repeat(2, 1), torch.tensor([12]), codes, torch.tensor([30 * 1024]))
    latents = ar(*args, return_latent=True, clip_inputs=False)
    _close(g_ar(*args, return_latent=True, clip_inputs=False), latents)

    clvp, g_clvp = _torch("clvp", models), _load("clvp", exports, backend)
    _close(g_clvp(text.repeat(2, 1), codes, return_loss=False), clvp(text.repeat(2, 1), codes, return_loss=False))
    _close(g_clvp.score(text, codes), clvp.score(text, codes))

    diff, g_diff = _torch("diffusion", models), _load("diffusion", exports, backend)
    clips = torch.randn(1, 2, 100, 96, generator=gen)
    _close(g_diff.get_conditioning(clips), diff.get_conditioning(clips))
    voice = diff.get_conditioning(clips)
    lat = latents[:1]
    frames = output_length(lat.shape[1])
    emb = diff.timestep_independent(lat, voice, frames, False)
    _close(g_diff.timestep_independent(lat, voice, frames, False), emb)
    for sampler in ("ddim", "dpm++2m"):
        both = BothDiffusions(diff, g_diff)
        mel = make_diffuser(3, sampler=sampler, cond_free=True, cond_free_k=2.0).sample_loop(
            both, (1, 100, frames), noise=torch.randn(1, 100, frames, generator=gen),
            model_kwargs={"precomputed_aligned_embeddings": emb})
        assert both.calls == 3 and mel.shape == (1, 100, frames)
    mel = mel * 3 - 6  # around a log-mel's level

    univnet, g_univnet = _torch("vocoder", models), _load("vocoder", exports, backend)
    torch.manual_seed(2)
    want = univnet.inference(mel)
    torch.manual_seed(2)
    _close(g_univnet.inference(mel), want)  # the noise is drawn in torch, from the same stream
    big, g_big = _torch("bigvgan_base", models), _load("bigvgan_base", exports, backend)
    _close(g_big.inference(mel), big(mel).clamp(-1, 1))
    hifi, g_hifi = _torch("hifidecoder", models), _load("hifidecoder", exports, backend)
    _close(g_hifi.inference(lat, cond), hifi.inference(lat, cond))
    lat147 = torch.randn(1, 147, lat.shape[2], generator=gen)  # 4 * 147 * 24000 / 22050 is a whole number of frames
    _close(g_hifi.inference(lat147, cond), hifi.inference(lat147, cond))


def test_openvino_reports_precision_and_stale_cache_is_refused(exports):
    from tortoise.backends import BackendError
    graph = _load("autoregressive", exports, "openvino", precision="f32")
    transformer, _ = graph.graphs.transformer()
    _, logits, cache = transformer.prompt(torch.randn(2, 9, 64))
    rows = cache.select(torch.tensor([1, 1, 0]))
    assert rows.batch == 3 and rows.length == 9
    transformer.step(torch.randn(3, 1, 64), rows)
    transformer.step(torch.randn(3, 1, 64), rows)
    assert rows.length == 11
    with pytest.raises(BackendError, match="superseded"):
        transformer.step(torch.randn(2, 1, 64), cache)
    assert transformer.precision == "f32" and "stateful" in transformer.describe()
    default = _load("clvp", exports, "openvino")  # f32 unless asked: never the CPU plugin's own bf16 default
    codes = torch.randint(0, 100, (1, 8))
    want = _torch("clvp", exports.models_dir).encode_speech(codes)
    _close(default.encode_speech(codes), want, 1e-4)
    assert default.graphs.runner("clvp_speech").precision == "f32"
    half = _load("clvp", exports, "openvino", precision="bf16")
    got = half.encode_speech(codes)
    # What runs is read back: the CPU plugin runs bf16 natively (AVX512-BF16, AMX) and emulates it on other AVX512
    # cores (an Ice Lake Xeon reports bf16 without the BF16 capability); on AVX2 the hint runs as f32.
    caps = torch.cpu.get_capabilities()
    bf16_runs = any(caps.get(f) for f in ("avx512_bf16", "amx_bf16", "avx512_bw"))
    assert half.graphs.runner("clvp_speech").precision == ("bf16" if bf16_runs else "f32")
    _close(got, want, 5e-2)  # bf16: 8 mantissa bits
    with pytest.raises(BackendError, match="unknown OpenVINO precision 'f8'"):
        _load("clvp", exports, "openvino", precision="f8")


def test_openvino_gives_back_its_memory_and_still_computes_the_same(exports):
    """After a stage the pipeline has every graph release its runtime's buffers: OpenVINO's decode cache (the request's
    state) and the compiled models' intermediate buffers go, and the next call computes the same. The weights file
    that compiling read is handed back to the kernel (Linux), and the weights the plugin still reads come back."""
    from tortoise.backends import BackendError
    from tortoise.runtimes.openvino import page_out
    graph = _load("autoregressive", exports, "openvino")
    transformer, _ = graph.graphs.transformer()
    embeds, step = torch.randn(1, 9, 64), torch.randn(3, 1, 64)
    _, first_logits, cache = transformer.prompt(embeds)
    rows = cache.select([0, 0, 0])
    want = transformer.step(step, rows)
    graph.release_memory()
    with pytest.raises(BackendError, match="superseded"):
        transformer.step(step, rows)  # the cache went with the request's state
    _, again_logits, cache = transformer.prompt(embeds)
    torch.testing.assert_close(again_logits, first_logits, rtol=0, atol=1e-6)
    got = transformer.step(step, cache.select([0, 0, 0]))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)

    clvp = _load("clvp", exports, "openvino")
    codes = torch.randint(0, 100, (2, 8))
    before = clvp.encode_speech(codes)
    runner = clvp.graphs.runner("clvp_speech")
    weights = Path(runner.path).with_suffix(".bin")
    advised = page_out(weights)
    clvp.release_memory()
    torch.testing.assert_close(clvp.encode_speech(codes), before, rtol=0, atol=0)
    if sys.platform.startswith("linux"):
        assert advised > 0  # OpenVINO mapped the file to read it
    assert page_out(weights.with_name("not-mapped.bin")) == 0


def test_devices_and_providers_absent_here_are_one_line_errors(exports):
    from tortoise.backends import BackendError
    auto = _load("clvp", exports, "openvino", device="AUTO")  # AUTO picks what is there (the CPU)
    codes = torch.randint(0, 100, (2, 8))
    _close(auto.encode_speech(codes), _torch("clvp", exports.models_dir).encode_speech(codes))
    import openvino as ov
    if "GPU" not in ov.Core().available_devices:
        with pytest.raises(BackendError, match="--ov_device CPU"):
            _load("clvp", exports, "openvino", device="GPU")
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        graph = _load("clvp", exports, "onnxruntime", provider="cuda")
        with pytest.raises(BackendError, match="onnxruntime-gpu") as err:
            graph.encode_speech(codes)
        assert "\n" not in str(err.value)


def test_diffusion_graph_rejects_what_it_was_not_exported_for(exports):
    graph = _load("diffusion", exports, "onnxruntime")
    with pytest.raises(ValueError, match="output_length"):
        graph.timestep_independent(torch.randn(1, 10, 64), torch.randn(1, 128), 99, False)
    with pytest.raises(ValueError, match="codes"):
        graph.timestep_independent(torch.zeros(1, 10, dtype=torch.long), torch.randn(1, 128), 43, False)


# ---------------------------------------------------------------------------------------------------------------
# the cache and failures
# ---------------------------------------------------------------------------------------------------------------
def test_changed_checkpoint_or_config_never_runs_a_stale_graph(tmp_path):
    from tortoise.utils.make_test_models import write_models
    models = tmp_path / "models"
    write_models(models, size="tiny", only=["clvp"])
    root = tmp_path / "cache"
    options = ExportOptions(dynamic=False, shapes=Shapes(codes=16))
    first = export("clvp_speech", models, "onnx", output_dir=root, options=options)
    assert not first.cached
    (models / "clvp2.pth").touch()  # same contents, new mtime: hashed again, same graph
    assert export("clvp_speech", models, "onnx", output_dir=root, options=options).path == first.path
    write_models(models, size="tiny", seed=99, only=["clvp"], force=True)  # new weights, same file name
    second = export("clvp_speech", models, "onnx", output_dir=root, options=options)
    assert not second.cached and second.path != first.path and second.verification == "passed"

    def key(**changes):
        opts = ExportOptions(**{**dict(dynamic=False, shapes=Shapes(codes=16)), **changes})
        return exporter.graph_entry("clvp_speech", models, "onnx", output_dir=root, options=opts)[0].key
    assert key() == second.path.parent.parent.name
    assert len({key(), key(shapes=Shapes(codes=17)), key(dynamic=True), key(opset=19), key(half=True)}) == 5
    config = json.loads((models / "config.json").read_text())
    config["clvp"]["speech_seq_len"] = 431  # a config change (the weights still fit): another graph
    (models / "config.json").write_text(json.dumps(config))
    assert key() != second.path.parent.parent.name
    config["clvp"]["speech_heads"] = 4
    (models / "config.json").write_text(json.dumps(config))
    with pytest.raises(exporter.ExportError):  # the checkpoint no longer fits the config: refused, one line
        export("clvp_speech", models, "onnx", output_dir=root, options=options)


@pytest.mark.parametrize("fmt", FORMATS)
def test_failed_verification_keeps_nothing_and_exits_nonzero(tmp_path, monkeypatch, capsys, fmt):
    from tortoise.utils.make_test_models import write_models
    models = tmp_path / "models"
    write_models(models, size="tiny", only=["autoregressive"])
    root = tmp_path / "cache"
    comp = COMPONENTS["ar_conditioning"]
    original = type(comp).reference
    monkeypatch.setattr(type(comp), "reference", lambda self, net, x: [original(self, net, x)[0] * 1.001])
    with pytest.raises(VerificationError, match="relative error"):
        export("ar_conditioning", models, fmt, output_dir=root, options=ExportOptions(dynamic=False,
                                                                                       shapes=SHORT_CLIPS))
    left = [p for p in root.rglob("*") if p.is_file() and p.name not in ("fingerprint.json", "checksums.json")]
    assert left == []  # no graph, no stamp, no temporary directory
    if fmt == "openvino":
        return
    code = cli.main(["--models_dir", str(models), "--output_dir", str(root), "--components", "ar_conditioning",
                     "--format", fmt, "--fixed_shapes", "--cond_frames", str(SHORT_CLIPS.cond_frames)])
    out = capsys.readouterr()
    assert code == 1 and "FAILED" in out.out and "Traceback" not in out.err
    assert not list(root.rglob("model.*"))


@pytest.mark.parametrize("runtime,extra", [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_missing_runtime_is_one_line_naming_the_extra(monkeypatch, capsys, tmp_path, runtime, extra):
    from tortoise.backends import MissingRuntime, load
    monkeypatch.setitem(sys.modules, runtime, None)  # import fails as if not installed
    with pytest.raises(MissingRuntime) as err:
        load("clvp", tmp_path, runtime)
    from tortoise.utils.errors import install_hint
    assert install_hint(extra) in str(err.value) and "\n" not in str(err.value)
    fmt = "onnx" if runtime == "onnxruntime" else "openvino"
    assert cli.main(["--models_dir", str(tmp_path), "--components", "clvp_text", "--format", fmt]) == 2
    err_out = capsys.readouterr().err
    assert err_out.count("\n") == 1 and install_hint(extra) in err_out and "Traceback" not in err_out


def test_cli_fixed_shapes_table_and_cache(export_models, tmp_path, capsys):
    """--fixed_shapes: the graph takes only those shapes."""
    argv = ["--models_dir", str(export_models), "--output_dir", str(tmp_path), "--components", "clvp_text",
            "--format", "openvino", "--fixed_shapes", "--batch_size", "2", "--text_tokens", "6"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "max rel err" in out and "text_latent" in out and "exported, verification passed" in out
    assert "for other tools" in out
    assert cli.main(argv) == 0 and "in the cache" in capsys.readouterr().out
    import openvino as ov
    model = ov.Core().read_model(str(next(tmp_path.rglob("model.xml"))))
    assert model.inputs[0].get_partial_shape().is_static and list(model.inputs[0].get_shape()) == [2, 6]


def test_cli_help_and_bad_component(capsys):
    run = subprocess.run([sys.executable, "-m", "tortoise.export", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "--fixed_shapes" in run.stdout and "--skip_verification" in run.stdout
    assert cli.main(["--components", "nope"]) == 2
    assert "unknown component" in capsys.readouterr().err
    assert cli.select_components("ar,univnet", None) == ["ar_conditioning", "ar_transformer", "univnet"]


def test_cli_default_writes_the_graphs_the_pipeline_loads(export_models, tmp_path, capsys, monkeypatch):
    """tortoise-export with default flags makes the pipeline's own graphs (same keys): the pipeline's call then finds
    them in the cache and exports nothing; the summary says so."""
    argv = ["--models_dir", str(export_models), "--output_dir", str(tmp_path), "--components", "univnet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "exported, verification passed" in out and "The pipeline will use these graphs: --backend onnxruntime" in out
    monkeypatch.setenv("TORTOISE_EXPORT_DIR", str(tmp_path))
    from tortoise.backends.networks import GraphSet
    from tortoise.export import exporter
    calls = []
    real = exporter.export_onnx
    monkeypatch.setattr(exporter, "export_onnx", lambda *a, **kw: calls.append(a) or real(*a, **kw))
    from tortoise.backends import get_backend
    path = GraphSet(get_backend("onnxruntime"), str(export_models), "vocoder").path("univnet")
    assert calls == [] and str(path).startswith(str(tmp_path))  # found, not exported again


def test_cli_all_skips_what_has_no_checkpoint(export_models, tmp_path, capsys, monkeypatch):
    """'all' names and skips the components whose checkpoint is missing (offline: hifidecoder.pth, BigVGAN)."""
    skipped = []
    chosen = cli.select_components("all", export_models, skipped)
    assert "bigvgan" in [name for name, _ in skipped] and "bigvgan" not in chosen and "univnet" in chosen
    models = tmp_path / "models"
    models.mkdir()
    for f in export_models.iterdir():
        if f.is_file() and f.name != "hifidecoder.pth":
            (models / f.name).symlink_to(f)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    skipped = []
    chosen = cli.select_components("all", models, skipped)
    assert "hifigan" not in chosen and any(name == "hifigan" and "hifidecoder.pth" in why for name, why in skipped)


def test_a_killed_exports_temporary_directory_is_removed_by_the_next(tmp_path):
    """Temporary export directories carry their process id; those whose process is gone are removed when the next
    export starts, whatever graph or key they were for; one of a live process (this one) is kept."""
    import os

    from tortoise.export import cache
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    entry = cache.Entry(tmp_path, "univnet", "abc123")
    for name in ("univnet", "clvp_text"):
        (tmp_path / name).mkdir()
    stale = tmp_path / "univnet" / f".tmp-{int(dead.stdout)}.abc123.xyz"
    other_key = tmp_path / "univnet" / f".tmp-{int(dead.stdout)}.def456.xyz"
    other_graph = tmp_path / "clvp_text" / f".tmp-{int(dead.stdout)}.0123ab.xyz"
    mine = tmp_path / "univnet" / f".tmp-{os.getpid()}.abc123.old"
    for d in (stale, other_key, other_graph, mine):
        d.mkdir()
    (stale / "model.onnx").write_bytes(b"half-written")
    fresh = entry.temp_dir()
    assert not stale.exists() and not other_key.exists() and not other_graph.exists() and mine.exists()
    assert fresh.name.startswith(f".tmp-{os.getpid()}.abc123.")
