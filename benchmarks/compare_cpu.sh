#!/usr/bin/env bash
# Same-run CPU comparison with the peer renderer nanodrr (pure-torch backend) on W1-cpu.
#   bash benchmarks/compare_cpu.sh [OUT.jsonl]
# Needs: the project venv (.venv), network access to PyPI for a throwaway peer venv, and the
# example CT (fetched by `xraysyn data example`). The peer is installed with --no-deps next to a
# stub torchio (../shared/bench/stub), exactly as ../shared/bench/peers_cpu.py expects.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/cpu_W1-cpu_$(date +%F).jsonl}
bench=${PEERS_BENCH:-../shared/bench}
peer_venv=${PEER_VENV:-/tmp/xraysyn-peer-venv}
if [ ! -x "$peer_venv/bin/python" ]; then
  python3 -m venv "$peer_venv"
  "$peer_venv/bin/pip" install -q torch==2.13.0 numpy scipy
  "$peer_venv/bin/pip" install -q --no-deps nanodrr==0.1.7 roma platformdirs jaxtyping wadler_lindig
fi
ct=$(.venv/bin/xraysyn data example | awk '$1 == "ct" {print $2}')
vols=$(mktemp -d)
.venv/bin/python "$bench/prepare_volumes.py" "$ct" "$vols" >/dev/null
{
  echo "{\"machine\": \"$(nproc)-core $(uname -m) CPU\", \"date\": \"$(date +%F)\"}"
  PYTHONPATH="$bench/stub" PEERS_VOLUMES="$vols" "$peer_venv/bin/python" "$bench/peers_cpu.py"
  .venv/bin/python benchmarks/projector.py --volumes "$vols" --impls naive-grid_sample,xraysyn,xraysyn-reference
} | tee "$out"
