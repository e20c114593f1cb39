"""Write a complete checkpoint directory of random-weight networks in the released file format.

    python -m tortoise.utils.make_test_models DIR --size tiny|full [--seed N] [--only NAME ...]

``tiny`` writes small networks of the released architectures plus a ``config.json`` describing them (how the tests
run the whole pipeline in seconds); ``full`` writes released-size networks (several GB: for benchmarks). The audio
they make is noise: the weights are random. Files are written atomically; an existing file is kept unless --force.
"""
import argparse
import json
import os
import sys
import tempfile
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


def _save_atomic(obj, path):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_models(out_dir, size="tiny", seed=0, only=None, force=False, configs=None):
    """Write the checkpoints (and for ``tiny`` the config.json) into ``out_dir``; returns the paths written.

    ``configs`` (name -> config) replaces the size's configurations, e.g. tiny networks at the released widths."""
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
        sd = model.state_dict()
        released_format = getattr(model, "released_state_dict", None)
        if released_format is not None:
            sd = released_format()
        _save_atomic({spec.state_key: sd} if spec.state_key else sd, path)
        written.append(path)
        del model, sd
    if size == "tiny" or custom:
        cfg_path = out_dir / CONFIG_FILE
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
