#!/usr/bin/env bash
# Run every stage benchmark, ours and the original side by side, one after another (never two at once), and keep
# each one's output under OUT. Usage: benchmarks/run_all.sh ORIGINAL_PYTHON MODELS_DIR OUT [REPEATS]
#   ORIGINAL_PYTHON: python of the original's environment (tests/parity/make_env.sh DIR makes one: DIR/bin/python)
#   MODELS_DIR:      full-size random-weight checkpoints (python -m tortoise.utils.make_test_models DIR --size full)
set -euo pipefail
orig=${1:?usage: run_all.sh ORIGINAL_PYTHON MODELS_DIR OUT [REPEATS]}
models=${2:?usage: run_all.sh ORIGINAL_PYTHON MODELS_DIR OUT [REPEATS]}
out=${3:?usage: run_all.sh ORIGINAL_PYTHON MODELS_DIR OUT [REPEATS]}
reps=${4:-3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
run() {  # name, then the command
  local name=$1; shift
  echo "== $name: $*" | tee "$out/$name.log"
  "$@" 2>&1 | tee -a "$out/$name.log"
}
run ar_ours python3 benchmarks/bench_autoregressive.py --impl ours --repeats "$reps"
run ar_original "$orig" benchmarks/bench_autoregressive.py --impl original --repeats "$reps"
run clvp python3 benchmarks/bench_clvp.py --impl both --repeats "$reps" --original-python "$orig"
run vocoder_ours python3 benchmarks/bench_vocoder.py --impl ours --repeats "$reps"
run vocoder_original "$orig" benchmarks/bench_vocoder.py --impl original --models univnet,hifigan --repeats "$reps"
run diffusion python3 benchmarks/bench_diffusion.py --impl both --repeats "$reps" --stages conditioning,ti,forward,guided \
  --original-python "$orig"
run pipeline python3 benchmarks/bench_pipeline.py --impl both --models_dir "$models" --repeats 1 \
  --original_python "$orig"
# The graph backends (pip install -e '.[onnx,openvino]'; nncf for ov-int8w): per stage, then end to end on ONNX
# Runtime. The first run exports full-size graphs into MODELS_DIR/exported (about 10 GB, many minutes; untimed).
run backends python3 benchmarks/bench_backends.py --models_dir "$models" --repeats "$reps"
run pipeline_onnxruntime python3 benchmarks/bench_pipeline.py --impl ours --backend onnxruntime --models_dir "$models" \
  --repeats 1
