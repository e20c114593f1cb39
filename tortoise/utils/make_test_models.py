"""Write a complete checkpoint directory of random-weight networks in the released file format.

    python -m tortoise.utils.make_test_models DIR --size tiny|full [--seed N] [--only NAME ...] [--force]

``tiny`` writes small networks of the released architectures plus a ``config.json`` describing them (how the tests
run the whole pipeline in seconds); ``full`` writes released-size networks (several GB: for benchmarks). The audio
they make is noise: the weights are random. Files are written atomically; an existing file (``config.json`` included,
so real weights are never paired with tiny configs) is kept unless --force.

Every file carries the traits of the published one (``../shared/REFERENCE.md``, "What the released files really
hold"), so tests and benchmarks load what users load:
- ``autoregressive.pth``: a plain state dict holding the legacy GPT-2 buffers ``gpt.h.N.attn.bias`` (uint8 causal
  mask) and ``gpt.h.N.attn.masked_bias`` (-1e4), no ``gpt.wte`` / ``gpt.wpe``;
- ``vocoder.pth``: UnivNet's training container ``{model_g, model_d, optim_g, optim_d, step, epoch, hp_str, githash}``
  with weight norm as ``weight_g`` / ``weight_v``, its storages tagged as saved on CUDA;
- ``hifidecoder.pth``: a weight-normed plain state dict whose storages are tagged as saved on CUDA;
- the others: plain fp32 state dicts.
"""
import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from tortoise.utils.checkpoints import CHECKPOINTS, CONFIG_FILE, RELEASED_CONFIGS, TINY_CONFIGS, build_model

SIZES = {"tiny": TINY_CONFIGS, "full": RELEASED_CONFIGS}


def _randomize(model, std=0.02):
    """Give parameters that were initialised to zero (zero_module outputs, biases) small random values, so every
    layer of a random network takes part in its output instead of being an identity."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.numel() and not p.any():
                p.normal_(0.0, std)


def _save_atomic(obj, path, cuda_tags=False):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with _storages_tagged_cuda(cuda_tags):
            torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; a models directory is readable like any download
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _storages_tagged_cuda(enabled):
    """While active, ``torch.save`` records CPU storages with the location ``cuda:0``, as a file saved from a GPU
    (the released ``vocoder.pth`` and ``hifidecoder.pth``): loading it without ``map_location`` fails on a machine
    without CUDA, exactly as the published files do."""
    if not enabled:
        yield
        return

    def tag(storage):
        return "cuda:0" if storage.device.type == "cpu" else None

    def never(obj, location):  # loading goes through torch's own CUDA deserializer / map_location
        return None

    registry = torch.serialization._package_registry
    torch.serialization.register_package(0, tag, never)
    try:
        yield
    finally:
        registry[:] = [entry for entry in registry if entry[1] is not tag]


def _univnet_container(generator_sd, seed):
    """The UnivNet training checkpoint around ``generator_sd``: a (small) weight-normed discriminator, Adam states,
    step / epoch counters and the hparams / git strings, as the released vocoder.pth holds them."""
    gen = torch.Generator().manual_seed(seed)
    disc = {}
    for i, (c_in, c_out) in enumerate(((1, 4), (4, 8), (8, 1))):
        v = torch.randn(c_out, c_in, 5, generator=gen)
        disc[f"MRD.discriminators.0.convs.{i}.weight_g"] = torch.norm_except_dim(v, 2, 0)
        disc[f"MRD.discriminators.0.convs.{i}.weight_v"] = v
        disc[f"MRD.discriminators.0.convs.{i}.bias"] = torch.zeros(c_out)

    def adam(params):
        state = {i: {"step": torch.tensor(1000.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                 for i, p in enumerate(params.values())}
        group = {"lr": 1e-4, "betas": (0.5, 0.9), "eps": 1e-9, "weight_decay": 0.0, "amsgrad": False,
                 "params": list(range(len(params)))}
        return {"state": state, "param_groups": [group]}

    return {"model_g": generator_sd, "model_d": disc, "optim_g": adam(generator_sd), "optim_d": adam(disc),
            "step": 1000, "epoch": 10, "hp_str": "audio:\n  sampling_rate: 24000\n  n_mel_channels: 100\n",
            "githash": "0000000"}


# Files whose released storages are tagged as saved on CUDA.
CUDA_SAVED = ("vocoder", "hifidecoder")


def write_models(out_dir, size="tiny", seed=0, only=None, force=False, configs=None):
    """Write the checkpoints (and for ``tiny`` the config.json) into ``out_dir``; returns the paths written.

    An existing file is kept unless ``force``; that includes ``config.json``. ``configs`` (name -> config) replaces
    the size's configurations, e.g. tiny networks at the released widths."""
    custom = configs is not None
    configs = configs if custom else SIZES[size]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(only) if only else list(CHECKPOINTS)
    written = []
    for i, name in enumerate(names):
        spec = CHECKPOINTS[name]
        path = out_dir / spec.filename
        if path.exists() and not force:
            continue
        torch.manual_seed(seed + i)
        model = build_model(name, configs[name])
        _randomize(model)
        released_format = getattr(model, "released_state_dict", None)
        sd = released_format() if released_format is not None else model.state_dict()
        if name == "vocoder":
            obj = _univnet_container(sd, seed + i)
        else:
            obj = {spec.state_key: sd} if spec.state_key else sd
        _save_atomic(obj, path, cuda_tags=name in CUDA_SAVED)
        written.append(path)
        del model, sd, obj
    cfg_path = out_dir / CONFIG_FILE
    if (size == "tiny" or custom) and (force or not cfg_path.exists()):
        tmp = cfg_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({k: configs[k] for k in CHECKPOINTS}, indent=1))
        os.replace(tmp, cfg_path)
        written.append(cfg_path)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tortoise.utils.make_test_models", description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", nargs="+", choices=sorted(CHECKPOINTS), help="write only these networks")
    ap.add_argument("--force", action="store_true", help="overwrite existing files")
    args = ap.parse_args(argv)
    try:
        for p in write_models(args.out_dir, args.size, args.seed, args.only, args.force):
            print(p)
    except OSError as e:
        print(f"error: cannot write to {args.out_dir}: {e.strerror}; choose a writable directory", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
