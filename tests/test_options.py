"""ModelOptions: the one set of model knobs, checked once, taken by every front end; its identity is a clip's."""
import dataclasses
import pickle

import pytest

from tortoise import api, cli
from tortoise.options import ModelOptions


def test_model_options_are_checked_once_with_the_fix_in_one_line():
    for bad, words in ((dict(vocoder="wavenet"), "unknown vocoder 'wavenet': use one of univnet"),
                       (dict(kv_cache_positions="shifted"), "kv_cache_positions must be 'contiguous' or 'original'"),
                       (dict(dtype="float64"), "unknown dtype 'float64'"),
                       (dict(backend="tensorrt"), "unknown backend 'tensorrt': use one of torch, onnxruntime"),
                       (dict(ort_provider="rocm"), "unknown ONNX Runtime provider 'rocm'"),
                       (dict(ov_device="NPU"), "unknown OpenVINO device 'NPU'"),
                       (dict(backend_precision="int4"), "unknown backend precision 'int4'"),
                       (dict(autoregressive_batch_size=0), "autoregressive_batch_size must be at least 1"),
                       (dict(threads=0), "threads must be at least 1")):
        with pytest.raises(ValueError, match=words):
            ModelOptions(**bad)
    assert ModelOptions(vocoder="BigVGAN_Base").vocoder == "bigvgan_base"
    assert ModelOptions(ov_device="GPU.1", dtype="torch.bfloat16").ov_device == "GPU.1"
    for alias in ("bf16", "fp16", "half", "fp32"):  # the names TextToSpeech(dtype=) has always taken
        assert ModelOptions(dtype=alias).dtype == alias


def test_model_options_are_frozen_hashable_and_travel():
    options = ModelOptions(models_dir="/m", threads=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.threads = 3
    assert pickle.loads(pickle.dumps(options)) == options and hash(options) == hash(ModelOptions("/m", threads=2))
    assert options.replace(threads=1).threads == 1 and options.threads == 2


def test_the_command_line_builds_them_from_its_flags():
    args = cli.build_parser().parse_args(["--models_dir", "/m", "--low_vram", "--half", "--int8", "--no_cache",
                                          "--original_kv_positions", "--batch_size", "4", "--threads", "1",
                                          "--disable_redaction", "--tokenizer", "tok.json", "--backend", "openvino",
                                          "--ov_device", "GPU", "Hi."])
    options = cli.model_options(args, "bigvgan_base")
    assert options == ModelOptions(models_dir="/m", high_vram=False, half=True, int8=True, kv_cache=False,
                                   kv_cache_positions="original", autoregressive_batch_size=4, threads=1,
                                   enable_redaction=False, tokenizer_vocab_file="tok.json", backend="openvino",
                                   ov_device="GPU", vocoder="bigvgan_base")
    streamed = cli.model_options(args, "hifigan", stream=True)
    assert streamed.stream and not streamed.preload and streamed.vocoder == "univnet"


def test_identity_names_what_changes_the_audio_and_nothing_else(tiny_models_dir):
    base = ModelOptions(models_dir=str(tiny_models_dir), device="cpu")
    ident = api.model_identity(base)
    ar = ident["files"]["autoregressive"]
    assert ar[0] == str((tiny_models_dir / "autoregressive.pth").resolve()) and ar[1] > 0 and ar[2] > 0
    assert ident["precision"] == "f32" and ident["backend"] == "torch" and ident["vocoder"] == "univnet"
    same = (dict(threads=1), dict(autoregressive_batch_size=2), dict(high_vram=False), dict(enable_redaction=False))
    for change in same:
        assert api.model_identity(base.replace(**change)) == ident, change
    differ = (dict(vocoder="bigvgan_base"), dict(int8=True), dict(kv_cache_positions="original"),
              dict(backend="openvino"), dict(stream=True), dict(dtype="bfloat16"), dict(tokenizer_vocab_file="t"))
    for change in differ:
        assert api.model_identity(base.replace(**change)) != ident, change
    assert api.model_identity(base.replace(stream=True))["vocoder"] == "hifigan"


def test_text_to_speech_takes_them_or_the_originals_keywords(tiny_models_dir):
    options = ModelOptions(models_dir=str(tiny_models_dir), device="cpu", preload=False, threads=1,
                           autoregressive_batch_size=3, kv_cache_positions="original")
    tts = api.TextToSpeech.from_options(options)
    assert tts.options is options and tts.autoregressive_batch_size == 3 and tts.threads == 1
    assert not tts.models.loaded("autoregressive")
    by_keywords = api.TextToSpeech(3, str(tiny_models_dir), True, True, device="cpu", preload=False, threads=1,
                                   kv_cache_positions="original")
    assert by_keywords.options == options
    assert api.TextToSpeech(models_dir=str(tiny_models_dir), device="cpu", preload=False,
                            device_only=True).options.high_vram is True


def test_the_speech_server_records_its_models_identity(tiny_models_dir, monkeypatch, tmp_path):
    """The server's clips carry the identity of its models (it used to send an empty one with every request)."""
    from tortoise.server import app as server_app
    from tortoise.server import cli as server_cli
    seen = {}
    monkeypatch.setattr(server_app, "create_app", lambda config, engine: seen.setdefault("config", config))
    args = server_cli.build_parser().parse_args(["--models_dir", str(tiny_models_dir), "--device", "cpu",
                                                 "--voices_dir", str(tmp_path / "v")])
    server_cli.build_app(args, lambda message: None)
    assert seen["config"].model_identity == api.model_identity(cli.model_options(args, "univnet", stream=False))
    assert seen["config"].model_identity["files"]["autoregressive"][1] > 0
