#!/usr/bin/env bash
# Reproduce the shipped weights (src/xraysyn/weights/xraysyn-cpu64.pt) with the project's own commands, and with
# BASELINES=1 the ablation baselines of the evaluation (MODEL_CARD.md). CPU presets: about 30 min (stage 1) + 1 h
# (stage 2) on 2 idle cores; baselines about 1 h more. Runs go to $RUNS (default runs/, ignored by git); an
# interrupted run continues where it stopped when the script is started again.
#
#   scripts/make_weights.sh                       # or: make weights
#   RADIOGRAPHS=/path/to/tbx11k_healthy_256 BASELINES=1 scripts/make_weights.sh
set -euo pipefail
cd "$(dirname "$0")/.."
X=${XRAYSYN:-.venv/bin/xraysyn}
RUNS=${RUNS:-runs}
RADIOGRAPHS=${RADIOGRAPHS:-../shared/data/tbx11k_healthy_256}   # 50 real frontal radiographs (TBX11K, research use)
OUT=${OUT:-src/xraysyn/weights/xraysyn-cpu64.pt}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}                    # one thread per process is fastest on 2 shared cores
mkdir -p "$RUNS"

train() {  # train KIND RUN_DIR ARGS... : a new run, or --resume of a stopped one
  local kind=$1 run=$2; shift 2
  if [ -f "$run/config.yaml" ]; then
    $X train $kind --out "$run" --resume --no-progress
  else
    $X train $kind --out "$run" --no-progress "$@"
  fi
}

# Stage 1: the 3D PriorNet on procedural phantoms (0.8) and the example chest CT (0.2) at 64^3.
ct=$($X data example | awk '$1 == "ct" {print $2}')
mkdir -p "$RUNS/ct_src" && ln -sf "$ct" "$RUNS/ct_src/"
[ -f "$RUNS/shards64/prepare_summary.json" ] || $X prepare ct "$RUNS/ct_src" "$RUNS/shards64" --size 64
train prior "$RUNS/prior-cpu64" --config cpu64 --data phantom:0.8 --data "$RUNS/shards64:0.2" --steps 1500
$X export "$RUNS/prior-cpu64" --out "$RUNS/prior-cpu64.pt" --overwrite

# Stage 2: the 2DRN with its hypernetwork M and the LSGAN behind the frozen 3DPN, on the real radiographs.
train refine "$RUNS/refine-cpu64" --config cpu64 --prior "$RUNS/prior-cpu64.pt" --data "$RADIOGRAPHS" --steps 3000
$X export "$RUNS/refine-cpu64" --out "$OUT" --half --overwrite   # embeds the 3DPN export
echo "wrote $OUT"

if [ "${BASELINES:-0}" = 1 ]; then
  train "baseline refine_nom" "$RUNS/refine_nom" --config cpu64 --prior "$RUNS/prior-cpu64.pt" --data "$RADIOGRAPHS" --steps 3000
  $X export "$RUNS/refine_nom" --out "$RUNS/refine_nom-cpu64.pt" --half --overwrite
  for b in prior_drr x2ct refiner2d; do
    train "baseline $b" "$RUNS/$b" --config cpu64 --data phantom:0.8 --data "$RUNS/shards64:0.2" --steps 500
    $X export "$RUNS/$b" --out "$RUNS/$b-cpu64.pt" --overwrite
  done
fi
