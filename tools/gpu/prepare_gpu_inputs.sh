#!/usr/bin/env bash
# Prepare, on this (networked) machine, the inputs tools/gpu/gpu_session.sh expects on the GPU machine (which
# has no network), under .gpu/ (git-ignored through .git/info/exclude, so the device tool carries it only when
# asked: carry [".gpu"]):
#   .gpu/whl/    wheels of the peers for CPython 3.12 (nanodrr 0.1.7, flashdrr 0.6.0, roma, platformdirs), no deps
#   .gpu/vols/   ct128.npy / ct256.npy from $SHARED/prepare_volumes.py on the example chest CT
#   .gpu/bench/  copies of $SHARED/peers_gpu.py and its stub/
# where $SHARED is a folder of the peers' benchmark scripts, which are not part of this repository (point SHARED
# at your copy; the default is ../shared/bench beside the checkout).
#
#   bash tools/gpu/prepare_gpu_inputs.sh          (after make install; fetches the example CT if needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
SHARED=${SHARED:-../shared/bench}
for need in "$PY" "$SHARED/prepare_volumes.py" "$SHARED/peers_gpu.py" "$SHARED/stub"; do
  [ -e "$need" ] || { echo "prepare_gpu_inputs: $need is missing (run make install; SHARED=$SHARED)" >&2; exit 1; }
done
mkdir -p .gpu/whl .gpu/vols .gpu/bench
grep -qxF ".gpu/" .git/info/exclude 2>/dev/null || echo ".gpu/" >> .git/info/exclude
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --dest .gpu/whl \
  nanodrr==0.1.7 flashdrr==0.6.0 roma==1.8.0 platformdirs
ct=$("$PY" -c 'from xraysyn.data.example import fetch_example_data; print(fetch_example_data(progress=True).ct)')
[ -f .gpu/vols/ct256.npy ] && [ -f .gpu/vols/ct128.npy ] || "$PY" "$SHARED/prepare_volumes.py" "$ct" .gpu/vols
cp "$SHARED/peers_gpu.py" .gpu/bench/
rm -rf .gpu/bench/stub && cp -r "$SHARED/stub" .gpu/bench/
du -sh .gpu/* && ls .gpu/whl
