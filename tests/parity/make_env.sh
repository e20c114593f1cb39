#!/bin/bash
# Creates the virtual environment of the ORIGINAL Tortoise (tortoise-tts 3.0.0, the numerical reference of this
# project), and optionally regenerates every parity fixture with it.
#
# Usage:
#   tests/parity/make_env.sh DIR              create DIR (a venv), then use DIR/bin/python
#   tests/parity/make_env.sh DIR --fixtures   also run every tests/parity/make_*_fixtures.py with DIR/bin/python
#
# Example: tests/parity/make_env.sh /work/origenv --fixtures
#
# What goes in, and why:
#   torch 2.13.0 (CPU)             the same torch as the main environment (installed from the local wheel cache)
#   tortoise-tts 3.0.0 --no-deps   its pinned requirements do not resolve beside torch 2.13; the ones it needs follow
#   transformers 4.31.0            the original's GPT-2 code needs this exact version
#   tokenizers 0.13.3              the last release transformers 4.31 accepts
#   torchaudio 2.11.0 --no-deps    the original's mels and resampling; its native libraries are CUDA-linked and fail
#                                  to load beside the CPU torch, so they are deleted: the Python code that the
#                                  original calls (MelSpectrogram, resample) runs without them
# Our own package is never installed there: fixture scripts import only the original `tortoise`.
# Needs: python3 (3.11) with venv, and pip access to the package registry.
set -euo pipefail
dir=${1:?usage: make_env.sh DIR [--fixtures]}
mode=${2:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

python3 -m venv "$dir"
pip="$dir/bin/pip"
py="$dir/bin/python"
$pip install -q torch==2.13.0
$pip install -q --no-deps tortoise-tts==3.0.0
$pip install -q transformers==4.31.0 tokenizers==0.13.3 'huggingface_hub<1' tqdm rotary_embedding_torch inflect \
  progressbar einops unidecode scipy librosa soundfile
$pip install -q --no-deps torchaudio==2.11.0
# Checks run from / so that a `tortoise/` directory in the current one (this repository) cannot shadow the original.
ta=$(cd / && "$py" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("torchaudio").origin))')
rm -f "$ta"/lib/*.so
where=$(cd / && "$py" -c 'import tortoise.api, torchaudio; print(tortoise.api.__file__)')
case "$where" in
  */site-packages/tortoise/api.py) echo "original tortoise ready: $where" ;;
  *) echo "expected the original tortoise in $dir, but python imported $where" >&2; exit 1 ;;
esac

if [ "$mode" = "--fixtures" ]; then
  for script in "$here"/make_*_fixtures.py; do
    echo "running $script"
    "$py" "$script"
  done
elif [ -n "$mode" ]; then
  echo "unknown option: $mode (expected --fixtures)" >&2
  exit 2
fi
