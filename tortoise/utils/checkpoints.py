"""Where Tortoise's weights come from: the registry of released checkpoint files and their model configurations.

The released configurations are data, kept here and nowhere else.
"""
import copy
import importlib
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from xpu.memory import RELEASED_AR_CONFIG

HUB_REPO = "Manmay/tortoise-tts"
HUB_REVISION_ENV = "TORTOISE_HUB_REVISION"  # pins a branch, tag or commit of the hub repositories (default: main)
DEFAULT_HUB_REVISION = "main"
# Wrappers a training setup puts in front of every key (DataParallel / DistributedDataParallel): stripped on load.
WRAPPER_PREFIXES = ("module.",)

# Constructor keyword arguments of each released network (those the original implementation passes).
RELEASED_CONFIGS = {
    "autoregressive": dict(RELEASED_AR_CONFIG),  # kept in the device layer, which sizes batches for it
    "diffusion": dict(model_channels=1024, num_layers=10, in_channels=100, out_channels=200, in_latent_channels=1024,
                      in_tokens=8193, dropout=0, use_fp16=False, num_heads=16, layer_drop=0,
                      unconditioned_percentage=0),
    "clvp": dict(dim_text=768, dim_speech=768, dim_latent=768, num_text_tokens=256, text_enc_depth=20,
                 text_seq_len=350, text_heads=12, num_speech_tokens=8192, speech_enc_depth=20, speech_heads=12,
                 speech_seq_len=430, use_xformers=True),
    "cvvp": dict(model_dim=512, transformer_heads=8, dropout=0, mel_codes=8192, conditioning_enc_depth=8,
                 cond_mask_percentage=0, speech_enc_depth=8, speech_mask_percentage=0, latent_multiplier=1),
    "vocoder": dict(),
    "rlg_auto": dict(channels=1024),
    "rlg_diffuser": dict(channels=2048),
    "classifier": dict(classes=2, spec_dim=1, embedding_dim=512, depth=5, downsample_factor=4, resnet_blocks=2,
                       attn_blocks=4, num_attn_heads=4, base_channels=32, dropout=0, kernel_size=5,
                       distribute_zero_label=False),
    "hifidecoder": dict(in_channels=1024, out_channels=1, resblock_type="1", resblock_dilation_sizes=[[1, 3, 5]] * 3,
                        resblock_kernel_sizes=[3, 7, 11], upsample_kernel_sizes=[16, 16, 4, 4],
                        upsample_initial_channel=512, upsample_factors=[8, 8, 2, 2], cond_channels=1024),
}

# Small configurations for tests and quick trials: the same architectures, tiny widths and depths. Dimensions that
# cross model boundaries stay consistent (AR model_dim = diffusion in_latent_channels = HiFi-GAN in/cond channels;
# diffusion conditioning latent = 2 x model_channels = rlg_diffuser channels).
TINY_CONFIGS = {
    "autoregressive": dict(RELEASED_CONFIGS["autoregressive"], layers=2, model_dim=64, heads=4),
    "diffusion": dict(RELEASED_CONFIGS["diffusion"], model_channels=64, num_layers=2, in_latent_channels=64,
                      num_heads=2),
    "clvp": dict(RELEASED_CONFIGS["clvp"], dim_text=32, dim_speech=32, dim_latent=32, text_enc_depth=1,
                 text_heads=2, speech_enc_depth=1, speech_heads=2),
    "cvvp": dict(RELEASED_CONFIGS["cvvp"], model_dim=32, transformer_heads=2, conditioning_enc_depth=1,
                 speech_enc_depth=1),
    "vocoder": dict(noise_dim=8, channel_size=8),
    "rlg_auto": dict(channels=64),
    "rlg_diffuser": dict(channels=128),
    "classifier": dict(RELEASED_CONFIGS["classifier"], embedding_dim=32, resnet_blocks=1, attn_blocks=1,
                       num_attn_heads=2, base_channels=8),
    "hifidecoder": dict(RELEASED_CONFIGS["hifidecoder"], in_channels=64, cond_channels=64,
                        upsample_initial_channel=32),
}


@dataclass(frozen=True)
class Checkpoint:
    """One released checkpoint file and the network it holds."""
    name: str            # registry key, also the key of its section in a models dir's config.json
    filename: str        # file name in the hub repository and in a models directory
    target: str          # "module:Class" of the network
    state_key: str = ""  # the state dict sits under this key of the saved dict ("" = the dict itself)
    hub_repo: str = HUB_REPO
    # (repository, path in it) tried on the hub when the main repository lacks the file
    fallbacks: tuple = ()


CHECKPOINTS = {c.name: c for c in (
    Checkpoint("autoregressive", "autoregressive.pth", "tortoise.models.autoregressive:UnifiedVoice"),
    Checkpoint("diffusion", "diffusion_decoder.pth", "tortoise.models.diffusion_decoder:DiffusionTts"),
    Checkpoint("clvp", "clvp2.pth", "tortoise.models.clvp:CLVP"),
    # cvvp.pth is missing from Manmay/tortoise-tts (original issue #692); the older repository has it under .models/
    Checkpoint("cvvp", "cvvp.pth", "tortoise.models.cvvp:CVVP",
               fallbacks=(("jbetker/tortoise-tts-v2", ".models/cvvp.pth"),)),
    Checkpoint("vocoder", "vocoder.pth", "tortoise.models.vocoder:UnivNetGenerator", state_key="model_g"),
    Checkpoint("rlg_auto", "rlg_auto.pth", "tortoise.models.random_latent_generator:RandomLatentConverter"),
    Checkpoint("rlg_diffuser", "rlg_diffuser.pth", "tortoise.models.random_latent_generator:RandomLatentConverter"),
    Checkpoint("classifier", "classifier.pth", "tortoise.models.classifier:AudioMiniEncoderWithClassifierHead"),
    Checkpoint("hifidecoder", "hifidecoder.pth", "tortoise.models.hifigan_decoder:HifiganGenerator"),
)}

CONFIG_FILE = "config.json"

# NVIDIA's BigVGAN checkpoints (the fast fork's vocoders): a directory in NVIDIA's layout (config.json +
# bigvgan_generator.pt), looked for as MODELS_DIR/<repository name>, else downloaded from the hub.
BIGVGAN_REPOS = {"bigvgan_base": "nvidia/bigvgan_base_24khz_100band", "bigvgan": "nvidia/bigvgan_24khz_100band"}


class CheckpointError(RuntimeError):
    """A checkpoint cannot be found or loaded; the message is one line that says how to fix it."""


def default_models_dir():
    """``$TORTOISE_MODELS_DIR``, else ``~/.cache/tortoise/models`` (the original's location)."""
    return Path(os.environ.get("TORTOISE_MODELS_DIR") or Path.home() / ".cache" / "tortoise" / "models")


def _spec(name):
    try:
        return CHECKPOINTS[name]
    except KeyError:
        raise CheckpointError(f"unknown checkpoint {name!r}; known: {', '.join(CHECKPOINTS)}") from None


def hub_revision(revision=None):
    """The hub revision to download from: ``revision`` when given, else ``$TORTOISE_HUB_REVISION``, else ``main``.

    One released file (``hifidecoder.pth``) was replaced upstream once; pinning a revision keeps a setup
    reproducible. No commit is hard-coded here because none can be verified from this project's build machines."""
    return revision or os.environ.get(HUB_REVISION_ENV) or DEFAULT_HUB_REVISION


def resolve_checkpoint(name, models_dir=None, path=None, download=True, revision=None):
    """Path of checkpoint ``name``: an explicit ``path`` > ``models_dir/<file>`` > the hub (cached under models_dir).

    The hub download is the original's (``hf_hub_download(repo, file, cache_dir=models_dir)``), so a models directory
    filled by the original implementation is found too, and ``HF_HUB_OFFLINE=1`` uses only what is cached there.
    ``revision`` (default :func:`hub_revision`) pins the hub revision. A file the main repository lacks (cvvp.pth)
    is then looked for in the older repository that has it.
    """
    spec = _spec(name)
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{name} checkpoint {path} does not exist; check the path you passed")
        return path
    models_dir = Path(models_dir).expanduser() if models_dir else default_models_dir()
    local = models_dir / spec.filename
    if local.is_file():
        return local
    if not download:
        raise CheckpointError(f"{spec.filename} is not in {models_dir}; put it there or pass --models_dir")
    revision = hub_revision(revision)
    sources = ((spec.hub_repo, spec.filename, revision),) + tuple((r, f, DEFAULT_HUB_REVISION)
                                                                  for r, f in spec.fallbacks)
    first_error = None
    for repo, filename, rev in sources:
        try:
            return _hub_download(repo, filename, models_dir, rev)
        except Exception as e:  # offline, no network, hub error: try the next source, then one line with the fix
            first_error = first_error or e
    reason = str(first_error).strip().splitlines()[0] if str(first_error).strip() else type(first_error).__name__
    where = " or ".join(f"{repo}@{rev}" for repo, _, rev in sources)
    raise CheckpointError(
        f"{spec.filename} is not in {models_dir} and could not be downloaded from the hub repository {where} "
        f"({type(first_error).__name__}: {reason[:160]}); download it into that directory or pass "
        f"--models_dir DIR") from first_error


def _hub_download(repo, filename, models_dir, revision):
    from huggingface_hub import hf_hub_download
    return Path(hf_hub_download(repo_id=repo, filename=filename, cache_dir=str(models_dir), revision=revision))


def bigvgan_dir(name, models_dir=None, download=True):
    """The directory of BigVGAN checkpoint ``name``: ``models_dir/<repository name>`` when present, else downloaded
    from the hub into the models dir's cache (one line with the fix when that fails)."""
    repo = BIGVGAN_REPOS[name]
    models_dir = Path(models_dir).expanduser() if models_dir else default_models_dir()
    local = models_dir / repo.split("/")[-1]
    if local.is_dir() or not download:
        return local
    try:
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id=repo, cache_dir=str(models_dir)))
    except Exception as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise CheckpointError(
            f"the {name} vocoder is not in {local} and could not be downloaded from {repo} ({reason}); download it "
            f"there (config.json + bigvgan_generator.pt) or use --vocoder univnet") from None


def model_config(name, models_dir=None):
    """The constructor kwargs of network ``name``: the released config, overridden by ``config.json[name]``."""
    _spec(name)
    cfg = copy.deepcopy(RELEASED_CONFIGS[name])
    models_dir = Path(models_dir).expanduser() if models_dir else default_models_dir()
    cfg_file = models_dir / CONFIG_FILE
    if cfg_file.is_file():
        try:
            overrides = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{cfg_file} is not valid JSON ({e}); fix or delete it") from e
        cfg.update(overrides.get(name, {}))
    return cfg


def load_state_dict(path, state_key=""):
    """Read a checkpoint without running code (``weights_only=True``), memory-mapped where the format allows."""
    path = Path(path)
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds more than tensors (pickled code or objects) and was refused; "
                              f"use the released file or re-save it as a plain state dict") from e
    except (OSError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} could not be read ({type(e).__name__}); the file is damaged or not a "
                              f"checkpoint: download it again") from e
    if state_key:
        if not isinstance(sd, dict) or state_key not in sd:
            raise CheckpointError(f"{path} has no {state_key!r} entry; is it the right checkpoint?")
        sd = sd[state_key]
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path} does not hold a state dict; is it the right checkpoint?")
    return strip_wrapper_prefix(sd)


def strip_wrapper_prefix(state_dict):
    """Drop a ``module.`` prefix that DataParallel / DistributedDataParallel training puts in front of every key."""
    for prefix in WRAPPER_PREFIXES:
        if state_dict and all(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items()}
    return state_dict


def check_state_dict(model, state_dict, source="checkpoint"):
    """Raise a one-line CheckpointError naming the first missing, unexpected or misshapen key."""
    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state_dict:
            raise CheckpointError(f"{source} lacks key {key!r} that {type(model).__name__} needs; "
                                  f"wrong checkpoint or model config")
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise CheckpointError(f"{source}: {key!r} has shape {tuple(state_dict[key].shape)}, "
                                  f"{type(model).__name__} expects {tuple(value.shape)}; wrong model config?")
    for key in state_dict:
        if key not in expected:
            raise CheckpointError(f"{source} has unexpected key {key!r} for {type(model).__name__}; "
                                  f"wrong checkpoint or model config")


def model_class(name):
    module, cls = _spec(name).target.split(":")
    return getattr(importlib.import_module(module), cls)


def build_model(name, config):
    return model_class(name)(**config)


def load_model(name, models_dir=None, path=None, device="cpu", config=None, revision=None):
    """Build network ``name`` from its config and load its checkpoint strictly; returned in eval mode on ``device``.

    Tensors are read onto the CPU whatever device they were saved from (``hifidecoder.pth`` was saved on CUDA).
    A network may define three classmethod / method hooks, applied here in this order:
    ``config_for_checkpoint(config, state_dict) -> config`` (a size the checkpoint itself fixes, e.g. a fine-tune's
    text vocabulary), ``convert_checkpoint(state_dict) -> state_dict`` (the explicit key map of released files: legacy
    buffers checked and dropped, weight norm folded) and ``prepare_inference()``. Every key the network needs must
    then be present, with its shape, and no other key may be: each mismatch is a one-line error naming the key.
    Floating-point tensors of another dtype (fp16 fine-tunes) are cast to the network's dtype.
    """
    spec = _spec(name)
    ckpt = resolve_checkpoint(name, models_dir=models_dir, path=path, revision=revision)
    cls = model_class(name)
    sd = load_state_dict(ckpt, spec.state_key)
    cfg = config if config is not None else model_config(name, models_dir)
    try:
        adapt = getattr(cls, "config_for_checkpoint", None)
        if adapt is not None:
            cfg = adapt(cfg, sd)
        convert = getattr(cls, "convert_checkpoint", None)
        if convert is not None:
            sd = convert(sd)
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{ckpt}: {str(e).strip(chr(39))}") from e
    model = build_model(name, cfg)
    check_state_dict(model, sd, source=str(ckpt))
    model.load_state_dict(sd, strict=True)
    model.eval()
    prepare = getattr(model, "prepare_inference", None)
    if prepare is not None:
        prepare()
    return model.to(device)
