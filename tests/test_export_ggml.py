"""tortoise-export --format ggml|gguf and tortoise-get-conditioning-latents --format ggml, on tiny random weights.

The files are read back with a reader written here from the format tortoise.cpp's ``main.cpp`` loaders read (uint32
magic, then per tensor int32 n_dims, name length, ttype, ne[n_dims] innermost first, the name, the data; nothing
else), independently of the writer, and compared with the checkpoint files' own tensors (weight norm folded by hand
for UnivNet, size-1 axes dropped as tortoise.cpp declares them). GGUF is read with the ``gguf`` package's reader.
tortoise.cpp itself is not needed: scripts/check_tortoise_cpp.py runs it where a checkout exists.
"""
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tortoise import get_conditioning_latents as gcl
from tortoise.export import cli, ggml
from tortoise.export.exporter import ExportError
from tortoise.export.tortoise_cpp import export_file
from tortoise.utils import checkpoints

gguf = pytest.importorskip("gguf")

MAGIC = 0x67676D6C
AR_RENAMES = {"inference_model.transformer.h.": "gpt.h.", "inference_model.transformer.ln_f.": "gpt.ln_f.",
              "inference_model.lm_head.0.": "final_norm.", "inference_model.lm_head.1.": "mel_head."}


def read_legacy_ggml(path):
    """The format as tortoise.cpp's loaders read it -> (magic, [(name, ttype, ne, values in torch order)])."""
    data = path.read_bytes()
    (magic,) = struct.unpack_from("<I", data, 0)
    pos, tensors = 4, []
    while pos < len(data):
        n_dims, length, ttype = struct.unpack_from("<iii", data, pos)
        assert 1 <= n_dims <= 4 and ttype in (0, 1), (n_dims, ttype)
        ne = struct.unpack_from(f"<{n_dims}i", data, pos + 12)
        pos += 12 + 4 * n_dims
        name = data[pos:pos + length].decode("ascii")
        pos += length
        dtype = np.dtype("<f4") if ttype == 0 else np.dtype("<f2")
        count = int(np.prod(ne))
        values = np.frombuffer(data, dtype=dtype, count=count, offset=pos).reshape(ne[::-1])
        pos += count * dtype.itemsize
        tensors.append((name, ttype, tuple(ne), values))
    assert pos == len(data)  # the last tensor ends the file
    return magic, tensors


def checkpoint_tensor(network, name, raw):
    """The checkpoint file's own tensor that ``name`` in tortoise.cpp's file must equal."""
    if network == "autoregressive":
        for theirs, ours in AR_RENAMES.items():
            if name.startswith(theirs):
                name = ours + name[len(theirs):]
        return raw[name]
    if network == "vocoder" and name.endswith(".weight") and name[:-len("weight")] + "weight_v" in raw:
        v, g = raw[name[:-len("weight")] + "weight_v"], raw[name[:-len("weight")] + "weight_g"]
        return torch._weight_norm(v, g, 0)  # UnivNet's weight norm, folded
    return raw[name]


@pytest.fixture(scope="module")
def voice_latents(tmp_path_factory, models_dir):
    """A voice of two tone clips, its latents computed by tortoise-get-conditioning-latents --format ggml."""
    root = tmp_path_factory.mktemp("ggml_voice")
    (root / "voices" / "hum").mkdir(parents=True)
    t = np.arange(22050 * 2) / 22050
    for i, f0 in enumerate((150.0, 190.0)):
        sf.write(str(root / "voices" / "hum" / f"{i}.wav"), (0.3 * np.sin(2 * np.pi * f0 * t)).astype(np.float32),
                 22050)
    out = root / "latents"
    assert gcl.main(["--format", "ggml", "-V", str(root / "voices"), "-v", "hum", "-O", str(out), "--models_dir",
                     str(models_dir), "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, models_dir, voice_latents):
    root = tmp_path_factory.mktemp("ggml_cache")
    return root, {network: export_file(network, models_dir, "ggml", output_dir=root, any_shape=True,
                                       voice=str(voice_latents / "hum.pth")) for network in ggml.NETWORKS}


@pytest.mark.parametrize("network", ggml.NETWORKS)
def test_ggml_file_holds_the_checkpoints_tensors_as_tortoise_cpp_declares_them(network, exported, models_dir,
                                                                               voice_latents):
    _, results = exported
    path = results[network].path
    assert path.name == {"autoregressive": "ggml-model.bin", "diffusion": "ggml-diffusion-model.bin",
                         "vocoder": "ggml-vocoder-model.bin"}[network]
    magic, tensors = read_legacy_ggml(path)
    assert magic == MAGIC  # and no hyper-parameters: the first record parsed as a tensor
    spec = ggml.tortoise_cpp_shapes(network, checkpoints.model_config(network, models_dir))
    assert sorted(name for name, *_ in tensors) == sorted(spec)  # exactly what its loader declares
    spec_file = checkpoints.CHECKPOINTS[network]
    raw = checkpoints.load_state_dict(models_dir / spec_file.filename, spec_file.state_key)
    diffusion_latent = torch.load(voice_latents / "hum.pth", weights_only=True)[1]
    for name, ttype, ne, values in tensors:
        assert ttype == 0, name  # every loader declares GGML_TYPE_F32
        assert ne == spec[name][::-1], name  # ggml's ne is the torch shape reversed
        want = diffusion_latent if name == "diffusion_conditioning_latent" else checkpoint_tensor(network, name, raw)
        want = want.float().reshape(spec[name]).numpy()
        np.testing.assert_allclose(values, want, rtol=0, atol=1e-6 if network == "vocoder" else 0, err_msg=name)


def test_released_sizes_are_main_cpps(models_dir):
    """The sizes tortoise.cpp hard-codes (main.cpp, written out here as ggml ne) and the tensor counts of its files."""
    ar, diffusion, vocoder = (ggml.tortoise_cpp_shapes(n) for n in ggml.NETWORKS)
    assert (len(ar), len(diffusion), len(vocoder)) == (30 * 12 + 10, 297, 88)
    ne = lambda shapes, name: shapes[name][::-1]  # noqa: E731
    assert ne(ar, "inference_model.transformer.h.29.attn.c_attn.weight") == (3072, 1024)
    assert ne(ar, "inference_model.transformer.h.0.mlp.c_proj.weight") == (1024, 4096)
    assert ne(ar, "text_embedding.weight") == (1024, 256) and ne(ar, "text_pos_embedding.emb.weight") == (1024, 404)
    assert ne(ar, "mel_pos_embedding.emb.weight") == (1024, 608) and ne(ar, "inference_model.lm_head.1.bias") == (8194,)
    assert ne(diffusion, "diffusion_conditioning_latent") == (2048,)
    assert ne(diffusion, "latent_conditioner.1.qkv.weight") == (1024, 3072)
    assert ne(diffusion, "layers.12.out_layers.3.weight") == (3, 1024, 1024)
    assert ne(diffusion, "layers.3.attn.relative_pos_embeddings.relative_attention_bias.weight") == (16, 32)
    assert ne(vocoder, "res_stack.2.kernel_predictor.kernel_conv.weight") == (3, 64, 24576)
    assert ne(vocoder, "res_stack.2.convt_pre.1.weight") == (8, 32, 32) and ne(vocoder, "conv_post.1.weight") == (7, 32)
    for network in ggml.NETWORKS:  # the released configs give the same table
        assert ggml.tortoise_cpp_shapes(network, checkpoints.RELEASED_CONFIGS[network]) == \
            ggml.tortoise_cpp_shapes(network)


def test_a_fine_tune_tortoise_cpp_cannot_load_is_refused_in_one_line():
    """A fine-tune with its own text vocabulary (300 rows): tortoise.cpp hard-codes 256, so no file is written."""
    fake = {name: np.broadcast_to(np.float32(0), shape) for name, shape in
            ggml.tortoise_cpp_shapes("autoregressive").items()}
    ggml.check_tortoise_cpp("autoregressive", fake)  # the released sizes pass
    fake["text_embedding.weight"] = np.broadcast_to(np.float32(0), (300, 1024))
    with pytest.raises(ggml.GgmlError) as e:
        ggml.check_tortoise_cpp("autoregressive", fake)
    assert "\n" not in str(e.value) and "text_embedding.weight" in str(e.value) and "(256, 1024)" in str(e.value)
    del fake["text_embedding.weight"]
    with pytest.raises(ggml.GgmlError, match="lacks"):
        ggml.check_tortoise_cpp("autoregressive", fake)


def test_tiny_checkpoint_is_refused_without_any_shape(models_dir, tmp_path, capsys):
    with pytest.raises(ExportError) as e:
        export_file("vocoder", models_dir, "ggml", output_dir=tmp_path)
    assert "\n" not in str(e.value) and "tortoise.cpp hard-codes" in str(e.value)
    assert not list(tmp_path.rglob("*.bin"))  # nothing written
    assert cli.main(["--format", "ggml", "--models_dir", str(models_dir), "--output_dir", str(tmp_path),
                     "--components", "ar"]) == 1
    out = capsys.readouterr().out
    assert "autoregressive: FAILED: text_embedding.weight has shape (256, 64) but tortoise.cpp hard-codes" in out


def test_diffusion_file_needs_a_voice_of_latents(models_dir, tmp_path):
    with pytest.raises(ExportError, match="--voice"):
        export_file("diffusion", models_dir, "ggml", output_dir=tmp_path, any_shape=True)
    voices = tmp_path / "voices" / "clips"
    voices.mkdir(parents=True)
    sf.write(str(voices / "a.wav"), (0.3 * np.sin(np.arange(22050) / 9)).astype(np.float32), 22050)
    with pytest.raises(ExportError, match="tortoise-get-conditioning-latents --format ggml"):
        export_file("diffusion", models_dir, "ggml", output_dir=tmp_path, any_shape=True, voice="clips",
                    voices_dir=str(tmp_path / "voices"))


def test_voice_bin_is_the_autoregressive_latent_as_raw_float32(voice_latents, models_dir):
    auto, diffusion = torch.load(voice_latents / "hum.pth", weights_only=True)
    raw = (voice_latents / "hum.bin").read_bytes()
    width = checkpoints.model_config("autoregressive", models_dir)["model_dim"]
    assert len(raw) == 4 * width  # tortoise.cpp reads model_dim floats, no header
    np.testing.assert_array_equal(np.frombuffer(raw, "<f4"), auto.reshape(-1).numpy())
    assert not torch.equal(auto.reshape(-1)[:8], diffusion.reshape(-1)[:8])


def test_voice_bin_is_not_replaced_unless_asked(voice_latents, models_dir, tmp_path, capsys):
    out = tmp_path / "latents"
    out.mkdir()
    (out / "hum.bin").write_bytes(b"mine")
    argv = ["--format", "ggml", "-V", str(voice_latents.parent / "voices"), "-v", "hum", "-O", str(out),
            "--models_dir", str(models_dir), "--device", "cpu"]
    assert gcl.main(argv) != 0
    assert "hum.bin already exists" in capsys.readouterr().err and (out / "hum.bin").read_bytes() == b"mine"
    assert gcl.main(argv + ["--overwrite"]) == 0
    np.testing.assert_allclose(np.fromfile(out / "hum.bin", "<f4"), np.fromfile(voice_latents / "hum.bin", "<f4"),
                               rtol=1e-5, atol=1e-6)  # the same latent (threads may round it differently)


def test_cache_keeps_a_file_and_a_new_voice_makes_another(exported, models_dir, voice_latents, tmp_path):
    root, results = exported
    again = export_file("diffusion", models_dir, "ggml", output_dir=root, any_shape=True,
                        voice=str(voice_latents / "hum.pth"))
    assert again.cached and again.path == results["diffusion"].path
    other = tmp_path / "other.pth"
    auto, diffusion = torch.load(voice_latents / "hum.pth", weights_only=True)
    torch.save((auto, diffusion + 1), other)
    moved = export_file("diffusion", models_dir, "ggml", output_dir=root, any_shape=True, voice=str(other))
    assert not moved.cached and moved.path != results["diffusion"].path
    values = dict((n, v) for n, _, _, v in read_legacy_ggml(moved.path)[1])["diffusion_conditioning_latent"]
    np.testing.assert_array_equal(values, (diffusion + 1).reshape(-1).numpy())
    forced = export_file("vocoder", models_dir, "ggml", output_dir=root, any_shape=True, force=True)
    assert not forced.cached and forced.path == results["vocoder"].path


@pytest.mark.parametrize("network", ("autoregressive", "vocoder"))
def test_gguf_holds_the_same_tensors_and_the_config(network, exported, models_dir, tmp_path):
    _, results = exported
    result = export_file(network, models_dir, "gguf", output_dir=tmp_path)
    assert result.path.name == f"tortoise-{network}.gguf"
    reader = gguf.GGUFReader(str(result.path))
    legacy = {name: (ne, values) for name, _, ne, values in read_legacy_ggml(results[network].path)[1]}
    assert [t.name for t in reader.tensors] == list(legacy)
    for t in reader.tensors:
        ne, values = legacy[t.name]
        assert tuple(int(n) for n in t.shape) == ne and t.tensor_type == gguf.GGMLQuantizationType.F32
        np.testing.assert_array_equal(np.asarray(t.data).reshape(values.shape), values)
    fields = reader.fields
    config = checkpoints.model_config(network, models_dir)
    assert bytes(fields["tortoise.network"].parts[-1]).decode() == network
    key = "layers" if network == "autoregressive" else "channel_size"
    if key in config:
        assert int(fields[f"tortoise.{network}.{key}"].parts[-1][0]) == config[key]


def test_command_line_writes_the_files_and_a_second_run_finds_them(models_dir, voice_latents, tmp_path):
    argv = ["--format", "ggml", "--models_dir", str(models_dir), "--output_dir", str(tmp_path), "--ggml_any_shape",
            "--voice", str(voice_latents / "hum.pth")]
    proc = subprocess.run([sys.executable, "-m", "tortoise.export", *argv], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": written, read back") == 3
    names = sorted(p.name for p in tmp_path.rglob("ggml-*.bin"))
    assert names == ["ggml-diffusion-model.bin", "ggml-model.bin", "ggml-vocoder-model.bin"]
    proc = subprocess.run([sys.executable, "-m", "tortoise.export", *argv], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.count(": in the cache") == 3, proc.stdout


def test_ar_checkpoint_flag_exports_that_file(models_dir, tmp_path, capsys):
    """--ar_checkpoint: a fine-tune elsewhere (here: the tiny checkpoint saved fp16 with a `module.` prefix)."""
    raw = checkpoints.load_state_dict(models_dir / "autoregressive.pth")
    tuned = tmp_path / "tuned.pth"
    torch.save({"module." + k: (v.half() if v.is_floating_point() else v) for k, v in raw.items()}, tuned)
    assert cli.main(["--format", "ggml", "--models_dir", str(models_dir), "--output_dir", str(tmp_path / "out"),
                     "--components", "ar", "--ggml_any_shape", "--ar_checkpoint", str(tuned)]) == 0
    (path,) = (tmp_path / "out").rglob("ggml-model.bin")
    values = dict((n, v) for n, _, _, v in read_legacy_ggml(path)[1])
    np.testing.assert_array_equal(values["mel_embedding.weight"], raw["mel_embedding.weight"].half().float().numpy())


def test_the_tortoise_cpp_check_skips_without_a_checkout(tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_tortoise_cpp.py"
    proc = subprocess.run([sys.executable, script, "--tortoise_cpp", str(tmp_path / "none"), "--models_dir",
                           str(tmp_path), "--voice", str(tmp_path / "v.pth")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("skipped: no tortoise.cpp checkout"), proc.stderr
