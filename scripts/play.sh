#!/usr/bin/env bash
# Play one tic-tac-toe episode on the embedded default model (Qwen2.5-Coder-0.5B-Instruct, as
# policy and as simulated user) served by a local vLLM, and print the transcript and the reward.
# The first run installs vLLM's CPU build, fetches and converts the model, and starts the server;
# the server is left running for the next episodes (`.venv/bin/sparring models down` stops it).
#
#   scripts/play.sh                 # real model on local vLLM
#   scripts/play.sh --scripted      # the scripted test server instead (no vLLM, seconds)
#   scripts/play.sh -- ARGS...      # extra arguments for `sparring run` (e.g. --json, --max-turns 3)
set -euo pipefail
cd "$(dirname "$0")/.."

scripted=0
run_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --scripted) scripted=1 ;;
        --) shift; run_args=("$@"); break ;;
        *) echo "play.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [[ $scripted == 1 ]]; then
    bash scripts/install.sh --no-vllm
    log=$(mktemp)
    .venv/bin/sparring fake-model --port 0 >"$log" 2>&1 &
    server=$!
    trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
    for _ in $(seq 100); do [[ -s $log ]] && break; sleep 0.1; done
    url=$(head -n 1 "$log")
    echo "[play] scripted model server at $url"
    .venv/bin/sparring run --env tictactoe --policy-base-url "$url" --user-base-url "$url" "${run_args[@]}"
    exit
fi

bash scripts/install.sh
.venv/bin/sparring models up
.venv/bin/sparring run --env tictactoe "${run_args[@]}"
echo "[play] the model server is still running; stop it with: .venv/bin/sparring models down"
