#!/usr/bin/env bash
# One GPU-machine session, everything in the same run so the ratios are honest:
# the cuda-marked tests, the Triton kernel timings, the projector API (xraysyn vs naive baseline)
# and the peer renderers (nanodrr, flashdrr) on the same volumes, poses, detectors and samples.
#
#   OUT=results_dir bash tools/gpu/gpu_session.sh [stage ...]      stages: tests (or gputests: the cuda-marked tests only)
#                                                                   api core trace peers kernels step host
# Configurations other than the shipped one are timed at kernel level (tools/gpu/gpu_kernels.py, one
# TritonConfig per case); the history of the options measured and removed is in docs/gpu_kernels.md.
#
# Expects (prepared on a networked machine by tools/gpu/prepare_gpu_inputs.sh, see docs/gpu_kernels.md):
#   .gpu/whl/    wheels nanodrr 0.1.7, flashdrr 0.6.0, roma, platformdirs (installed with --no-deps)
#   .gpu/vols/   ct128.npy / ct256.npy from the peers' prepare_volumes.py (the example chest CT)
#   .gpu/bench/  copies of the peers' peers_gpu.py and its torchio stub (scripts kept outside this repository)
set -u
OUT=${OUT:-/tmp/xraysyn-gpu}
mkdir -p "$OUT"
stages=${*:-tests api peers kernels step}
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=$PWD/src:/tmp/site
python3 - <<'PY' | tee "$OUT/env.json"
import json, torch, triton
p = torch.cuda.get_device_properties(0)
print(json.dumps(dict(gpu=p.name, sms=p.multi_processor_count, l2_mib=getattr(p, "L2_cache_size", 0) / 2**20,
                      torch=torch.__version__, triton=triton.__version__, cuda=torch.version.cuda)))
PY
for stage in $stages; do
  start=$(date +%s)
  case $stage in
    tests)   timeout 150 python3 -m pytest -q -p no:cacheprovider -m "cuda or not cuda" \
               tests/projector/test_triton.py tests/physics tests/projector/test_behaviour.py \
               tests/projector/test_host_path.py tests/projector/test_static_volume.py > "$OUT/tests.log" 2>&1
             tail -5 "$OUT/tests.log" ;;
    gputests) timeout 200 python3 -m pytest -q -p no:cacheprovider -m cuda tests/projector tests/physics \
               > "$OUT/tests.log" 2>&1
             # each failure's one-line reason too: the reply's output tail keeps it if the files are lost
             grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)" "$OUT/tests.log" | cut -c1-400 ;;
    kernels) timeout 200 python3 tools/gpu/gpu_kernels.py 2>&1 | tee "$OUT/kernels.jsonl" ;;
    host)    timeout 60 python3 tools/gpu/host_overhead.py --calls 1000 2>&1 | tee "$OUT/host.jsonl" ;;
    api)     timeout 200 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1,W2 \
               --impls naive-grid_sample,xraysyn,xraysyn-static --reps 10 2>&1 | tee "$OUT/api.jsonl" ;;
    core)    # the four targets with the shipped configuration, and the non-square detector
             { timeout 110 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1,W2 \
                 --impls xraysyn --modes fwd,fwd+bwd,adj --reps 10
               timeout 80 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2-rect \
                 --impls xraysyn --modes fwd,adj --reps 10
             } 2>&1 | tee "$OUT/core.jsonl" ;;
    trace)   # the shipped configuration through the public API, each case timed and then 3 calls profiled: where a
             # call's time goes (host lead, GPU busy, gaps, tail, per-kernel ms; tools/gpu/trace_breakdown.py)
             timeout 200 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1,W2 \
               --impls xraysyn --modes fwd,fwd+bwd,adj --reps 10 --trace 3 2>&1 | tee "$OUT/trace.jsonl" ;;
    peers)   PYTHONPATH=$PYTHONPATH:$PWD/.gpu/bench/stub PEERS_VOLUMES=$PWD/.gpu/vols \
               timeout 80 python3 .gpu/bench/peers_gpu.py nanodrr flashdrr 2>&1 | tee "$OUT/peers.jsonl" ;;
    step)    [ -f benchmarks/train_step.py ] && timeout 150 python3 benchmarks/train_step.py --device cuda 2>&1 | tee "$OUT/step.jsonl" ;;
  esac
  echo "stage $stage: $(( $(date +%s) - start )) s" | tee -a "$OUT/stages.txt"
done
# the tables of everything timed, last, so the reply's output tail holds them even if the files do not survive
python3 tools/gpu/gpu_report.py "$OUT"/*.jsonl 2>&1 | cut -c1-300 | tail -80
