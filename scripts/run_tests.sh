#!/usr/bin/env bash
# Install what the test suite needs, then run it: the README's test command, and what .ci/run runs.
#
#   scripts/run_tests.sh [pytest arguments...]      e.g. scripts/run_tests.sh -k webui
#
# 1. Debian packages the tests use, when missing: chromium (the web UI in a real browser) and shellcheck (lints the
#    shell scripts); apt-get as root, else through sudo. Audio for the tests is synthesised by the tests themselves.
# 2. PyTorch, when the Python has none: torch==2.13.0 (TORCH_SPEC to change it), from pip's configured index, or from
#    TORCH_INDEX_URL when set. From PyPI, Linux x86_64 torch is the CUDA build (several GB of nvidia-* packages); for
#    the CPU build set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (the build machines instead keep a CPU
#    wheel on local disk that pip finds by itself). An installed torch (a CUDA or XPU build, say) is kept.
# 3. This package with its test extra (pip install -e '.[test]'), then pytest.
#
# PYTHON picks the interpreter (default: python3, the active virtual environment's when one is active).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
me=scripts/run_tests.sh

missing=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || missing+=(chromium)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    echo "$me: ${missing[*]} missing and there is no apt-get here: install them with your package manager," \
         "then run $me again" >&2
    exit 1
  fi
  as_root=()
  if [ "${EUID:-$(id -u)}" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "$me: ${missing[*]} missing; installing them needs root: run" \
           "'apt-get install -y ${missing[*]}' as root, then $me again" >&2
      exit 1
    fi
    as_root=(sudo)
  fi
  echo "$me: installing ${missing[*]} with apt-get" >&2
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$PYTHON" -m pip install -q --index-url "$TORCH_INDEX_URL" "$TORCH_SPEC"
  else
    "$PYTHON" -m pip install -q "$TORCH_SPEC"
  fi
fi
"$PYTHON" -m pip install -q -e '.[test]'
exec "$PYTHON" -m pytest -q -p no:cacheprovider "$@"
