"""Voice directories: discovery, priority, clip and .pth loading, combination rules, refusal of escaping names."""
import os
import pickle

import pytest
import torch

from conftest import write_tone
from tortoise.utils import voices as V


tone = write_tone


@pytest.fixture
def vdir(tmp_path):
    root = tmp_path / "voices"
    for name, f0 in (("alice", 220.0), ("bob", 130.0)):
        (root / name).mkdir(parents=True)
        tone(root / name / "1.wav", f0=f0)
        tone(root / name / "2.wav", seconds=0.5, f0=f0 * 1.5)
    (root / "lat").mkdir()
    torch.save((torch.ones(1, 8), torch.full((1, 16), 2.0)), root / "lat" / "lat.pth")
    (root / "lat2").mkdir()
    torch.save((torch.zeros(1, 8), torch.zeros(1, 16)), root / "lat2" / "x.pth")
    (root / ".hidden").mkdir()
    (root / "empty").mkdir()
    return root


def test_get_voices_lists_dirs_with_sorted_files(vdir):
    found = V.get_voices([str(vdir)])
    assert {"alice", "bob", "lat", "lat2", "empty"} <= set(found)
    assert ".hidden" not in found
    assert [os.path.basename(p) for p in found["alice"]] == ["1.wav", "2.wav"]


def test_first_directory_wins(tmp_path, vdir):
    other = tmp_path / "other"
    (other / "alice").mkdir(parents=True)
    tone(other / "alice" / "only.wav")
    found = V.get_voices([str(other), str(vdir)])
    assert [os.path.basename(p) for p in found["alice"]] == ["only.wav"]
    assert "bob" in found


def test_missing_voices_dir_is_an_error(tmp_path):
    with pytest.raises(V.VoiceError, match="does not exist"):
        V.get_voices([str(tmp_path / "nope")])


def test_load_voice_clips_at_22k(vdir):
    clips, latents = V.load_voice("alice", [str(vdir)])
    assert latents is None and len(clips) == 2
    assert clips[0].shape == (1, 22050) and clips[1].shape == (1, 11025)
    assert clips[0].abs().max() <= 1.0


def test_load_voice_latents_and_random(vdir):
    clips, latents = V.load_voice("lat", [str(vdir)])
    assert clips is None and torch.equal(latents[0], torch.ones(1, 8))
    assert V.load_voice("random", [str(vdir)]) == (None, None)


@pytest.mark.parametrize("name", ["../alice", "alice/..", "/etc", "a/b", "..", ".", ".hidden", "a\\b", ""])
def test_escaping_names_are_refused(vdir, name):
    with pytest.raises(V.VoiceError):
        V.load_voice(name, [str(vdir)])


def test_unknown_voice_lists_known(vdir):
    with pytest.raises(V.VoiceError, match=r"Unknown voice 'carol'.*alice, bob"):
        V.load_voice("carol", [str(vdir)])


def test_empty_voice_says_what_to_add(vdir):
    with pytest.raises(V.VoiceError, match="no clips"):
        V.load_voice("empty", [str(vdir)])


def test_load_voices_pools_clips_and_averages_latents(vdir):
    clips, latents = V.load_voices(["alice", "bob"], [str(vdir)])
    assert latents is None and len(clips) == 4
    clips, latents = V.load_voices(["lat", "lat2"], [str(vdir)])
    assert clips is None
    assert torch.allclose(latents[0], torch.full((1, 8), 0.5)) and torch.allclose(latents[1], torch.ones(1, 16))


def test_combination_rules(vdir):
    with pytest.raises(V.VoiceError, match="clips with voices of .pth"):
        V.load_voices(["alice", "lat"], [str(vdir)])
    with pytest.raises(V.VoiceError, match="random voice cannot be combined"):
        V.load_voices(["random", "alice"], [str(vdir)])


def test_unreadable_clip_names_the_file(vdir):
    (vdir / "alice" / "3.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(V.VoiceError, match="3.wav"):
        V.load_voice("alice", [str(vdir)])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_latents_with_code_are_refused(tmp_path):
    (tmp_path / "v" / "evil").mkdir(parents=True)
    with open(tmp_path / "v" / "evil" / "evil.pth", "wb") as f:
        pickle.dump(_Evil(), f)
    with pytest.raises(V.VoiceError, match="Cannot read voice latents"):
        V.load_voice("evil", [str(tmp_path / "v")])


def test_latent_file_must_hold_a_pair(tmp_path):
    (tmp_path / "v" / "bad").mkdir(parents=True)
    torch.save({"a": torch.ones(1)}, tmp_path / "v" / "bad" / "bad.pth")
    with pytest.raises(V.VoiceError, match="latent pair"):
        V.load_voice("bad", [str(tmp_path / "v")])


def test_parse_voice_selection(vdir):
    known = V.get_voices([str(vdir)])
    assert V.parse_voice_selection("alice&bob,random", known) == [["alice", "bob"], ["random"]]
    assert V.parse_voice_selection("all", {"b": [], "a": []}) == [["a"], ["b"]]
    with pytest.raises(V.VoiceError, match="Unknown voice 'zed'"):
        V.parse_voice_selection("alice,zed", known)
    with pytest.raises(V.VoiceError, match="Invalid voice name"):
        V.parse_voice_selection("../x", known)
    with pytest.raises(V.VoiceError, match="random voice cannot"):
        V.parse_voice_selection("random&alice", known)


def test_package_ships_no_recordings():
    shipped = [f for _, _, files in os.walk(V.BUILTIN_VOICES_DIR) for f in files]
    assert not [f for f in shipped if f.lower().endswith(V.AUDIO_EXTENSIONS + (".pth",))]


def test_latents_are_checked_against_the_models_widths(tmp_path, tiny_models_dir):
    assert V.expected_latent_widths(tiny_models_dir) == (64, 128)  # model_dim, 2 x diffusion model_channels
    assert V.expected_latent_widths(tmp_path / "no_config_here") == (1024, 2048)  # the released models
    root = tmp_path / "v"
    for name, pair in (("ok", (torch.ones(1, 64), torch.ones(1, 128))), ("flat", (torch.ones(64), torch.ones(128))),
                       ("wide", (torch.ones(1, 1024), torch.ones(1, 2048))), ("ints", (torch.ones(1, 64, dtype=torch.long),
                                                                                      torch.ones(1, 128))),
                       ("batch", (torch.ones(2, 64), torch.ones(2, 128))),
                       ("inf", (torch.ones(1, 64), torch.full((1, 128), float("inf"))))):
        (root / name).mkdir(parents=True)
        torch.save(pair, root / name / f"{name}.pth")
    widths = V.expected_latent_widths(tiny_models_dir)
    auto, diff = V.load_voice("ok", [str(root)], latent_widths=widths)[1]
    assert auto.shape == (1, 64) and diff.shape == (1, 128)
    auto, diff = V.load_voice("flat", [str(root)], latent_widths=widths)[1]  # [W] is accepted, returned as [1, W]
    assert auto.shape == (1, 64) and diff.shape == (1, 128)
    assert V.load_voice("wide", [str(root)])[1][0].shape == (1, 1024)  # no models known: only the structure
    with pytest.raises(V.VoiceError) as e:
        V.load_voice("wide", [str(root)], latent_widths=widths)
    msg = str(e.value)
    assert "wide.pth" in msg and "[1, 1024] and [1, 2048]" in msg and "[1, 64]" in msg and "[1, 128]" in msg
    assert "tortoise-get-conditioning-latents" in msg and "\n" not in msg
    for name in ("ints", "batch"):
        with pytest.raises(V.VoiceError, match=f"{name}.pth"):
            V.load_voice(name, [str(root)])
    with pytest.raises(V.VoiceError, match="inf.pth' hold NaN or infinite"):
        V.load_voice("inf", [str(root)])
    with pytest.raises(V.VoiceError, match="made for different models"):
        V.load_voices(["ok", "wide"], [str(root)])  # averaging latents of two model sizes
