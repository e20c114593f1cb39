#!/usr/bin/env bash
# Build the Intel GPU stack from source: PyTorch with XPU, torchvision, torchaudio and the Intel Extension for
# PyTorch (IPEX), ahead-of-time compiled for one GPU family.
#
# Most users do NOT need this: PyTorch's own XPU wheels work with just the Intel GPU driver:
#     pip install torch --index-url https://download.pytorch.org/whl/xpu
# Build from source only for a GPU target or a patch the wheels lack. Run with --dry-run first.
set -euo pipefail

readonly PROG="${0##*/}"
readonly NATIVE_WHEELS="pip install torch --index-url https://download.pytorch.org/whl/xpu"
readonly MIN_DISK_GB="${COMPILE_BUNDLE_MIN_DISK_GB:-60}"  # sources + build trees of all four components

# torch version -> "torchvision torchaudio ipex-tag" (the releases built and tested together upstream;
# IPEX development stopped after 2.8, so newer torch versions have no IPEX)
declare -A PAIRS=(
    [2.5.1]="0.20.1 2.5.1 v2.5.10+xpu"
    [2.6.0]="0.21.0 2.6.0 v2.6.10+xpu"
    [2.7.0]="0.22.0 2.7.0 v2.7.10+xpu"
    [2.8.0]="0.23.0 2.8.0 v2.8.10+xpu"
    [2.9.0]="0.24.0 2.9.0 -"
)
# AOT targets ocloc knows for the GPUs Tortoise users have (others are passed through with a warning)
readonly KNOWN_AOT="ats-m150 ats-m75 dg2 dg2-g10 dg2-g11 dg2-g12 acm-g10 acm-g11 acm-g12 bmg bmg-g21 lnl-m mtl-u mtl-h arl-h pvc"

usage() {
    cat <<EOF
Usage: $PROG --dpcpp-root DIR --mkl-root DIR --aot TARGET[,TARGET] [options]

Builds wheels from source for Intel GPUs and installs them into the chosen Python.
Most users need only PyTorch's native XPU wheels instead:  $NATIVE_WHEELS

Required:
  --dpcpp-root DIR    DPC++/oneAPI compiler root holding env/vars.sh and bin/icpx   (or \$DPCPPROOT)
  --mkl-root DIR      oneMKL root holding env/vars.sh                               (or \$MKLROOT)
  --aot TARGETS       ahead-of-time device target(s), comma separated, or "none" for JIT only:
                        ats-m150  Arc A770 / A750 / A580, Data Center Flex 170
                        ats-m75   Arc A380 / A310, Flex 140
                        bmg       Arc B580 / B570
                        lnl-m, mtl-h, arl-h   Core Ultra integrated GPUs;  pvc  Data Center Max

Options:
  --component NAME    torch | vision | audio | ipex | all   (default: all; repeatable)
  --torch-version V   one of: ${!PAIRS[*]}  (default: 2.8.0; the others follow it)
  --work-dir DIR      where sources are cloned and built (default: ./intel-stack-build)
  --python PY         Python interpreter to build for and install into (default: python3)
  --jobs N            parallel compile jobs (default: number of CPUs)
  --check             check prerequisites only; exit 3 when something is missing
  --dry-run           check prerequisites and print the plan; change nothing
  -h, --help          this text

Exit codes: 0 done, 2 bad arguments, 3 missing prerequisites, 4 or other: a failed build step.
EOF
}

die() {  # die CODE MESSAGE
    printf '%s: %s\n' "$PROG" "$2" >&2
    exit "$1"
}

# ------------------------------------------------------------------ arguments
DPCPP_ROOT="${DPCPPROOT:-}"
MKL_ROOT="${MKLROOT:-}"
AOT=""
COMPONENTS=()
TORCH_VERSION="2.8.0"
WORK_DIR="./intel-stack-build"
PYTHON="python3"
JOBS="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 4)"
MODE="build"

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dpcpp-root) DPCPP_ROOT="${2:?--dpcpp-root needs a directory}"; shift 2 ;;
            --mkl-root) MKL_ROOT="${2:?--mkl-root needs a directory}"; shift 2 ;;
            --aot) AOT="${2:?--aot needs a target such as ats-m150, bmg or none}"; shift 2 ;;
            --component) COMPONENTS+=("${2:?--component needs torch, vision, audio, ipex or all}"); shift 2 ;;
            --torch-version) TORCH_VERSION="${2:?--torch-version needs a version}"; shift 2 ;;
            --work-dir) WORK_DIR="${2:?--work-dir needs a directory}"; shift 2 ;;
            --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
            --jobs) JOBS="${2:?--jobs needs a number}"; shift 2 ;;
            --check) MODE="check"; shift ;;
            --dry-run) MODE="dry-run"; shift ;;
            -h | --help) usage; exit 0 ;;
            *) usage >&2; die 2 "unknown argument '$1' (see --help)" ;;
        esac
    done
}

validate_args() {
    [[ -n "$DPCPP_ROOT" ]] || die 2 "--dpcpp-root is required (the oneAPI DPC++ compiler root, e.g. /opt/intel/oneapi/compiler/latest)"
    [[ -n "$MKL_ROOT" ]] || die 2 "--mkl-root is required (the oneMKL root, e.g. /opt/intel/oneapi/mkl/latest)"
    [[ -n "$AOT" ]] || die 2 "--aot is required: ats-m150 (Arc A770), bmg (Arc B580), ... or none (see --help)"
    [[ -n "${PAIRS[$TORCH_VERSION]+set}" ]] || die 2 "--torch-version $TORCH_VERSION is not one of: ${!PAIRS[*]}"
    [[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || die 2 "--jobs must be a positive number, got '$JOBS'"
    [[ ${#COMPONENTS[@]} -gt 0 ]] || COMPONENTS=(all)
    read -r VISION_VERSION AUDIO_VERSION IPEX_TAG <<<"${PAIRS[$TORCH_VERSION]}"
    local c expanded=()
    for c in "${COMPONENTS[@]}"; do
        case "$c" in
            all) expanded+=(torch vision audio all-ipex) ;;
            torch | vision | audio | ipex) expanded+=("$c") ;;
            *) die 2 "unknown component '$c': use torch, vision, audio, ipex or all" ;;
        esac
    done
    # "all" includes IPEX only where a release for this torch exists
    if [[ " ${expanded[*]} " == *" all-ipex "* && "$IPEX_TAG" != "-" ]]; then expanded+=(ipex); fi
    # build order is fixed: each later component builds against the torch installed by the earlier one
    COMPONENTS=()
    for c in torch vision audio ipex; do
        if [[ " ${expanded[*]} " == *" $c "* ]]; then COMPONENTS+=("$c"); fi
    done
    if [[ "$AOT" == "none" ]]; then
        AOT_LIST=""
    else
        AOT_LIST="$AOT"
        local t
        for t in ${AOT//,/ }; do
            if [[ " $KNOWN_AOT " != *" $t "* ]]; then
                printf '%s: warning: AOT target %s is not in the known list (%s); ocloc decides\n' \
                    "$PROG" "$t" "$KNOWN_AOT" >&2
            fi
        done
    fi
}

wants() { [[ " ${COMPONENTS[*]} " == *" $1 "* ]]; }

# ------------------------------------------------------------------ prerequisites
MISSING=()
missing() { MISSING+=("$1"); }

have() { command -v "$1" >/dev/null 2>&1; }

check_prerequisites() {
    local tool
    for tool in git cmake ninja gcc g++ make; do
        have "$tool" || missing "$tool: not on PATH (Ubuntu: sudo apt install git cmake ninja-build build-essential)"
    done
    if ! have "$PYTHON"; then
        missing "$PYTHON: not found (pass --python /path/to/python3.10+)"
    elif ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
        missing "$PYTHON: Python 3.10 or newer is needed (found $("$PYTHON" -V 2>&1))"
    elif ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        missing "$PYTHON -m pip: pip is missing ($PYTHON -m ensurepip --upgrade)"
    fi
    if [[ ! -f "$DPCPP_ROOT/env/vars.sh" ]]; then
        missing "DPC++ environment $DPCPP_ROOT/env/vars.sh not found (install the Intel oneAPI DPC++/C++ compiler and pass its root, e.g. /opt/intel/oneapi/compiler/latest)"
    elif [[ ! -x "$DPCPP_ROOT/bin/icpx" ]]; then
        missing "DPC++ compiler $DPCPP_ROOT/bin/icpx not found or not executable"
    fi
    [[ -f "$MKL_ROOT/env/vars.sh" ]] ||
        missing "oneMKL environment $MKL_ROOT/env/vars.sh not found (install Intel oneMKL and pass its root, e.g. /opt/intel/oneapi/mkl/latest)"
    if [[ -n "$AOT_LIST" ]] && ! have ocloc && [[ ! -x "$DPCPP_ROOT/bin/ocloc" ]]; then
        missing "ocloc (offline compiler, needed for --aot $AOT_LIST): install intel-ocloc from Intel's GPU repository, or use --aot none"
    fi
    if wants ipex && [[ ! -f /usr/include/level_zero/ze_api.h && ! -f "$DPCPP_ROOT/include/level_zero/ze_api.h" ]]; then
        missing "Level Zero headers (level_zero/ze_api.h) for IPEX: sudo apt install libze-dev (or level-zero-devel)"
    fi
    if wants ipex && [[ "$IPEX_TAG" == "-" ]]; then
        missing "IPEX for torch $TORCH_VERSION does not exist (IPEX ended at 2.8): choose --torch-version 2.8.0 or drop ipex"
    fi
    local parent free_gb
    parent="$WORK_DIR"
    while [[ ! -d "$parent" ]]; do parent="$(dirname "$parent")"; done
    free_gb="$(df -Pk "$parent" | awk 'NR == 2 {print int($4 / 1048576)}')"
    if [[ -n "$free_gb" && "$free_gb" -lt "$MIN_DISK_GB" ]]; then
        missing "disk: ${free_gb} GB free under $parent, about ${MIN_DISK_GB} GB needed for sources and build trees"
    fi
}

report_prerequisites() {
    if [[ ${#MISSING[@]} -eq 0 ]]; then
        echo "prerequisites: all found"
        return 0
    fi
    echo "prerequisites: ${#MISSING[@]} missing"
    local item
    for item in "${MISSING[@]}"; do printf '  missing: %s\n' "$item"; done
    return 1
}

# ------------------------------------------------------------------ the plan
# Each step is printed (shell-quoted, ready to paste); outside --dry-run it is also executed.
# Commands are arrays, never eval'd strings.
quoted() {
    local word out=()
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./:=+,@%-]+$ ]]; then out+=("$word"); else out+=("${word@Q}"); fi
    done
    printf '%s' "${out[*]}"
}

run() {
    printf '  $ %s\n' "$(quoted "$@")"
    if [[ "$MODE" == "build" ]]; then "$@"; fi
}

in_dir() {  # in_dir DIR CMD...
    local dir="$1"
    shift
    printf '  $ (cd %s && %s)\n' "$(quoted "$dir")" "$(quoted "$@")"
    if [[ "$MODE" == "build" ]]; then (cd "$dir" && "$@"); fi
}

set_env() {  # set_env NAME VALUE
    printf '  $ export %s=%q\n' "$1" "$2"
    if [[ "$MODE" == "build" ]]; then export "$1=$2"; fi
}

source_env() {  # source_env FILE
    printf '  $ source %s\n' "$(quoted "$1")"
    if [[ "$MODE" == "build" ]]; then
        set +u
        # shellcheck source=/dev/null
        source "$1"
        set -u
    fi
}

clone() {  # clone URL TAG DIR
    if [[ -d "$3/.git" ]]; then
        in_dir "$3" git fetch --depth 1 origin tag "$2"
        in_dir "$3" git checkout -f "$2"
        in_dir "$3" git submodule update --init --recursive --depth 1
    else
        run git clone --depth 1 --branch "$2" --recursive --shallow-submodules "$1" "$3"
    fi
}

build_wheel_and_install() {  # build_wheel_and_install SOURCE_DIR NAME
    local wheels="$WORK_DIR/wheels/$2"
    run rm -rf "$wheels"
    in_dir "$1" "$PYTHON" -m pip wheel --no-build-isolation --no-deps -w "$(realpath -m "$wheels")" .
    printf '  $ %s %s/*.whl\n' "$(quoted "$PYTHON" -m pip install --force-reinstall --no-deps)" "$(quoted "$wheels")"
    if [[ "$MODE" == "build" ]]; then
        local built=("$wheels"/*.whl)
        [[ -f "${built[0]}" ]] || die 4 "no wheel was built in $wheels"
        "$PYTHON" -m pip install --force-reinstall --no-deps "${built[@]}"
    fi
}

step_torch() {
    echo "== torch $TORCH_VERSION with XPU (AOT: ${AOT_LIST:-none, JIT at first use})"
    clone https://github.com/pytorch/pytorch "v$TORCH_VERSION" "$WORK_DIR/pytorch"
    in_dir "$WORK_DIR/pytorch" "$PYTHON" -m pip install -r requirements.txt
    set_env USE_XPU 1
    set_env USE_CUDA 0
    set_env USE_ROCM 0
    set_env TORCH_XPU_ARCH_LIST "$AOT_LIST"
    build_wheel_and_install "$WORK_DIR/pytorch" torch
}

step_vision() {
    echo "== torchvision $VISION_VERSION"
    clone https://github.com/pytorch/vision "v$VISION_VERSION" "$WORK_DIR/vision"
    build_wheel_and_install "$WORK_DIR/vision" vision
}

step_audio() {
    echo "== torchaudio $AUDIO_VERSION (optional: Tortoise itself does not use torchaudio)"
    clone https://github.com/pytorch/audio "v$AUDIO_VERSION" "$WORK_DIR/audio"
    set_env USE_FFMPEG 0
    build_wheel_and_install "$WORK_DIR/audio" audio
}

step_ipex() {
    echo "== intel-extension-for-pytorch $IPEX_TAG (optional; archived upstream, must match torch's major.minor)"
    clone https://github.com/intel/intel-extension-for-pytorch "$IPEX_TAG" "$WORK_DIR/intel-extension-for-pytorch"
    in_dir "$WORK_DIR/intel-extension-for-pytorch" "$PYTHON" -m pip install -r requirements.txt
    set_env BUILD_WITH_CPU 0
    set_env USE_AOT_DEVLIST "$AOT_LIST"
    build_wheel_and_install "$WORK_DIR/intel-extension-for-pytorch" ipex
}

print_header() {
    echo "Intel GPU stack from source ($MODE)"
    echo "  DPC++ root:  $DPCPP_ROOT"
    echo "  oneMKL root: $MKL_ROOT"
    echo "  AOT target:  ${AOT_LIST:-none}"
    echo "  components:  ${COMPONENTS[*]}"
    echo "  versions:    torch $TORCH_VERSION, torchvision $VISION_VERSION, torchaudio $AUDIO_VERSION, IPEX ${IPEX_TAG/#-/none (ended at 2.8)}"
    echo "  work dir:    $WORK_DIR   python: $PYTHON   jobs: $JOBS"
    echo "  note: most users need only the native wheels: $NATIVE_WHEELS"
}

main() {
    parse_args "$@"
    validate_args
    print_header
    check_prerequisites
    if ! report_prerequisites && [[ "$MODE" != "dry-run" ]]; then
        die 3 "missing prerequisites (listed above); nothing was changed"
    fi
    [[ "$MODE" == "check" ]] && return 0
    echo "plan:"
    run mkdir -p "$WORK_DIR"
    source_env "$DPCPP_ROOT/env/vars.sh"
    source_env "$MKL_ROOT/env/vars.sh"
    set_env MAX_JOBS "$JOBS"
    local c
    for c in "${COMPONENTS[@]}"; do "step_$c"; done
    echo "== check"
    run "$PYTHON" -c "import torch; assert torch.xpu.is_available(), \"no XPU device visible\"; print(torch.__version__, torch.xpu.get_device_name(0))"
    if [[ "$MODE" == "dry-run" ]]; then echo "dry run: nothing was changed"; fi
}

main "$@"
