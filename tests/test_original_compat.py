"""Drop-in for code written against the original Tortoise (``tortoise-tts`` 3.0.0): its public names and signatures,
code written the way public projects call it, and its scripts, on tiny models.

The original's names are read from its source archive (the one ``tortoise-voices fetch`` downloads, conftest's
``original_voices``) with ``ast``: nothing of the original is imported or run here.
"""
import ast
import inspect
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import soundfile as sf

from conftest import write_tone

ROOT = Path(__file__).resolve().parents[1]
# module -> which of its public names must exist here (None: every public module-level name)
MODULES = {
    "tortoise.api": None,
    "tortoise.api_fast": None,
    "tortoise.utils.audio": None,
    "tortoise.utils.text": None,
    "tortoise.utils.tokenizer": None,
    "tortoise.utils.diffusion": ("SpacedDiffusion", "space_timesteps", "get_named_beta_schedule"),
}
# SpacedDiffusion's training losses and classifier-guidance hooks: training, not inference (README: not here)
NOT_INFERENCE = {"training_losses", "autoregressive_training_losses", "condition_mean", "condition_score"}
# the original's own module-level imports are not its API (torchaudio, progressbar, hf_hub_download...)
IMPORTED = ast.Import, ast.ImportFrom


def original_source(archive, module):
    path = "tortoise-tts-3.0.0/" + module.replace(".", "/") + ".py"
    with tarfile.open(archive) as tar:
        return tar.extractfile(path).read().decode()


def public_definitions(source):
    """{name: ast node} of the module-level functions, classes and assignments whose names are public."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node
    return {name: node for name, node in out.items() if not name.startswith("_") and name != "pbar"}


def rejected_calls(original, ours):
    """What a call the original accepts would do to ours: parameters ours lacks, positional ones in another place,
    parameters ours requires that the original does not."""
    a = original.args
    theirs = [x.arg for x in a.posonlyargs + a.args if x.arg != "self"]
    required = theirs[:len(theirs) - len(a.defaults)]
    sig = inspect.signature(ours)
    params = [p for p in sig.parameters.values() if p.name != "self"]
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    problems = []
    for i, name in enumerate(theirs):
        if name not in sig.parameters and not var_kw:
            problems.append(f"no parameter {name!r}")
        elif i < len(positional) and positional[i] != name:
            problems.append(f"positional {i} is {positional[i]!r}, the original's {name!r}")
    for p in params if a.vararg is None else []:  # the original's *args may fill any of ours
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in required:
            problems.append(f"requires {p.name!r}")
    for kw in (x.arg for x in a.kwonlyargs):
        if kw not in sig.parameters and not var_kw:
            problems.append(f"no keyword {kw!r}")
    return problems


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_of_the_original_exists_with_a_compatible_signature(original_voices, module):
    import importlib
    ours = importlib.import_module(module)
    defs = public_definitions(original_source(original_voices.archive, module))
    wanted = MODULES[module] or sorted(defs)
    missing = [name for name in wanted if not hasattr(ours, name)]
    assert not missing, f"{module} lacks {missing}"
    problems = []
    for name in wanted:
        node, obj = defs[name], getattr(ours, name)
        if isinstance(node, ast.FunctionDef):
            problems += [f"{name}: {p}" for p in rejected_calls(node, obj)]
        elif isinstance(node, ast.ClassDef):
            for method in node.body:
                if isinstance(method, ast.FunctionDef) and method.name not in NOT_INFERENCE and (
                        method.name == "__init__" or not method.name.startswith("_")):
                    if not hasattr(obj, method.name):
                        problems.append(f"{name}.{method.name} missing")
                        continue
                    problems += [f"{name}.{method.name}: {p}"
                                 for p in rejected_calls(method, getattr(obj, method.name))]
    assert not problems, f"{module}: {problems}"


def test_the_old_paths_hand_on_the_same_objects():
    from tortoise import api, api_fast, pipeline
    from tortoise.utils import audio, sound, voices
    assert audio.load_voice is voices.load_voice and audio.get_voices is voices.get_voices
    assert audio.load_voices is voices.load_voices and audio.load_audio is sound.load_audio
    assert audio.wav_to_univnet_mel is sound.wav_to_univnet_mel and audio.TacotronSTFT is sound.TacotronSTFT
    assert api_fast.get_model_path is api.get_model_path and api.pad_or_truncate is pipeline.pad_or_truncate
    assert issubclass(api_fast.TextToSpeech, api.TextToSpeech)


def test_models_dir_get_model_path_and_batch_size(tmp_path):
    """MODELS_DIR comes from $TORTOISE_MODELS_DIR at import (a fresh interpreter); a checkpoint in it is returned
    with no network (HF_HUB_OFFLINE=1, and a file that is not a valid checkpoint: nothing loads it)."""
    (tmp_path / "autoregressive.pth").write_bytes(b"x")
    code = ("from tortoise.api import MODELS_DIR, DEFAULT_MODELS_DIR, MODELS, get_model_path, "
            "pick_best_batch_size_for_gpu; import os;"
            "print(MODELS_DIR); print(get_model_path('autoregressive.pth')); print(pick_best_batch_size_for_gpu());"
            "print(DEFAULT_MODELS_DIR == os.path.expanduser('~/.cache/tortoise/models'), len(MODELS))")
    env = {**os.environ, "TORTOISE_MODELS_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         timeout=120).stdout.split("\n")
    assert out[0] == str(tmp_path) and out[1] == str(tmp_path / "autoregressive.pth")
    assert int(out[2]) >= 1 and out[3] == "True 9"
    from tortoise.api import get_model_path
    with pytest.raises(ValueError, match="not found in available models"):
        get_model_path("gpt4.pth", str(tmp_path))


def test_load_wav_to_torch_as_the_original(tmp_path):
    import numpy as np

    from tortoise.utils.audio import load_wav_to_torch
    pcm = (np.sin(np.arange(2205) / 10) * 20000).astype(np.int16)
    sf.write(str(tmp_path / "a.wav"), pcm, 22050, subtype="PCM_16")
    samples, rate = load_wav_to_torch(str(tmp_path / "a.wav"))
    assert rate == 22050 and samples.shape == (2205,) and samples.dtype.is_floating_point
    assert abs(float(samples.abs().max()) - 20000 / 32768) < 1e-4


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("voices")
    for name, f0 in (("alice", 180.0), ("bob", 120.0)):
        (root / name).mkdir()
        for i in range(2):
            write_tone(root / name / f"{i}.wav", seconds=2.0, f0=f0 + 20 * i, tremolo=True)
    return root


PUBLIC_CODE = '''
import sys
import torch
import torchaudio_free_save  # the test's stand-in for torchaudio.save (torchaudio is not used here)
from tortoise.api import MODELS_DIR, TextToSpeech
from tortoise.utils.audio import get_voices, load_voices, load_voice, load_audio
from tortoise.utils.text import split_and_recombine_text
import tortoise.api_fast

voices_dir = sys.argv[1]
# the TTS WebUI extension: list voices, load a merged pair, build the model as it does, render each chunk
names = ["random"] + list(get_voices(extra_voice_dirs=[voices_dir]))
assert {"alice", "bob"} <= set(names), names
voice_samples, conditioning_latents = load_voices(["alice", "bob"], extra_voice_dirs=[voices_dir])
assert len(voice_samples) == 4 and conditioning_latents is None
assert load_voice("random") == (None, None)
tts = TextToSpeech(models_dir=MODELS_DIR, kv_cache=True, use_deepspeed=False, half=False, device=None,
                   tokenizer_vocab_file=None, tokenizer_basic=False)
for prompt in split_and_recombine_text("Hello there. This is a test."):
    result, state = tts.tts_with_preset(prompt, return_deterministic_state=True, k=1, voice_samples=voice_samples,
                                        conditioning_latents=conditioning_latents, cvvp_amount=0.0,
                                        num_autoregressive_samples=2, diffusion_iterations=2, temperature=0.8,
                                        length_penalty=1.0, repetition_penalty=2.0, top_p=0.8, max_mel_tokens=20,
                                        cond_free=True, cond_free_k=2, diffusion_temperature=1.0)
    gen_list = result if isinstance(result, list) else [result]
    assert gen_list[0].dim() == 3 and gen_list[0].shape[:2] == (1, 1), gen_list[0].shape
    assert isinstance(state[0], int) and state[1] == prompt
# the original README's API example
reference_clips = [load_audio(p, 22050) for p in get_voices([voices_dir])["alice"]]
pcm = tts.tts_with_preset("your text here", voice_samples=reference_clips, preset="ultra_fast",
                          num_autoregressive_samples=2, max_mel_tokens=20, diffusion_iterations=2)
torchaudio_free_save.save("generated.wav", pcm.squeeze(0).cpu(), 24000)
# the fast path as read_fast.py calls it, and a tts-webui-tortoise-tts keyword
fast = tortoise.api_fast.TextToSpeech(models_dir=MODELS_DIR, device_only=True, kv_cache=True, half=False)
wav = fast.tts("Hello.", voice_samples=reference_clips, use_deterministic_seed=3, max_mel_tokens=20)
assert wav.shape[:2] == (1, 1) and wav.shape[-1] > 0 and fast.high_vram
print("ok")
'''


def test_public_code_runs_unchanged(models_dir, voices_dir, tmp_path):
    """Code written the way public projects call the original (the TTS WebUI extension, the README), in a real
    subprocess on tiny models; the only stand-in is the audio writer it would import from torchaudio."""
    (tmp_path / "torchaudio_free_save.py").write_text(textwrap.dedent('''
        import soundfile
        def save(path, wav, rate):
            soundfile.write(path, wav.numpy().T, rate)
    '''))
    (tmp_path / "public.py").write_text(PUBLIC_CODE)
    env = {**os.environ, "TORTOISE_MODELS_DIR": str(models_dir), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "public.py", str(voices_dir)], cwd=tmp_path, capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
    audio, rate = sf.read(str(tmp_path / "generated.wav"))
    assert rate == 24000 and audio.size > 0


def _script(*args, cwd, via="file"):
    run = [sys.executable, str(ROOT / "tortoise" / f"{args[0]}.py")] if via == "file" else \
        [sys.executable, "-m", f"tortoise.{args[0]}"]
    return subprocess.run(run + list(args[1:]), cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_do_tts_writes_the_originals_file_names(models_dir, voices_dir, tmp_path):
    """``python tortoise/do_tts.py`` as the original README runs it (a file, from any directory): one file per
    voice of the list, named by its place in it, one per candidate with --candidates."""
    env_dir = tmp_path / "run"
    env_dir.mkdir()
    # the original finds voices only in tortoise/voices; --voices_dir adds a directory of the user's
    proc = _script("do_tts", "--text", "Hello there.", "--voice", "alice,alice&bob", "--preset", "ultra_fast",
                   "--model_dir", str(models_dir), "--voices_dir", str(voices_dir), "--output_path", "out",
                   "--candidates", "2", "--seed", "2", "--half", "False", "--kv_cache", "true", "-q", cwd=env_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (env_dir / "out").iterdir()) == [
        "alice-bob_1_0.wav", "alice-bob_1_1.wav", "alice_0_0.wav", "alice_0_1.wav"]  # a&b as a-b
    again = _script("do_tts", "--text", "Hello there.", "--voice", "alice", "--voices_dir", str(voices_dir),
                    "--model_dir", str(models_dir), "--output_path", "out", cwd=env_dir, via="module")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1  # nothing replaced unasked
    assert "do_tts.py: error:" in again.stderr and "--overwrite" in again.stderr


def test_read_writes_clips_and_the_joined_file_and_regenerates(models_dir, tmp_path):
    text = tmp_path / "story.txt"
    text.write_text("The first part of the story.|And the second part.\n")
    args = ["--textfile", str(text), "--voice", "random", "--preset", "ultra_fast", "--model_dir", str(models_dir),
            "--output_path", "long", "--seed", "5", "-q"]
    proc = _script("read", *args, cwd=tmp_path, via="module")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "long" / "random"
    assert sorted(p.name for p in out.iterdir()) == ["0.wav", "1.wav", "combined.wav"]
    joined, _ = sf.read(str(out / "combined.wav"))
    parts = [sf.read(str(out / f"{i}.wav"))[0] for i in (0, 1)]
    assert joined.shape[0] == sum(p.shape[0] for p in parts)
    first = (out / "0.wav").stat().st_mtime_ns
    proc = _script("read", *args, "--regenerate", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "0.wav").stat().st_mtime_ns == first  # kept: same text, voice, settings and seed


def test_yes_no_flags_mean_what_they_say():
    from tortoise.original_scripts import build_parser
    p = build_parser("do_tts")
    assert p.parse_args(["--half", "False"]).half is False  # the original's type=bool read this as True
    assert p.parse_args(["--half"]).half is True and p.parse_args([]).half is None
    assert p.parse_args(["--kv_cache", "no"]).kv_cache is False
    assert p.parse_args([]).candidates == 3 and p.parse_args([]).preset == "fast"
    from tortoise.cli import UsageError
    with pytest.raises(UsageError, match="expected true or false"):
        p.parse_args(["--half", "maybe"])
