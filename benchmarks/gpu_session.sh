#!/usr/bin/env bash
# One GPU-machine session, everything in the same run so the ratios are honest:
# the cuda-marked tests, the Triton kernel timings, the projector API (xraysyn vs naive baseline)
# and the peer renderers (nanodrr, flashdrr) on the same volumes, poses, detectors and samples.
#
#   OUT=results_dir bash benchmarks/gpu_session.sh [stage ...]     stages: tests (or gputests: the cuda-marked tests of the kernels'
#                                                                   files only) trace trace2 core adjw2 defaults configs api sweep peers kernels step host
#
# Expects (prepared on a networked machine by benchmarks/prepare_gpu_inputs.sh, see benchmarks/gpu_kernels.md):
#   .gpu/whl/    wheels nanodrr 0.1.7, flashdrr 0.6.0, roma, platformdirs (installed with --no-deps)
#   .gpu/vols/   ct128.npy / ct256.npy from ../shared/bench/prepare_volumes.py (the example chest CT)
#   .gpu/bench/  copies of ../shared/bench/peers_gpu.py and its torchio stub
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
# the adjoint variants pinned to each launch configuration the autotuner tries (xraysyn[abr=R+aw=W], comma list)
pinned_adjoints() {
  python3 -c 'from xraysyn.projector.triton_backend import _TUNING_CONFIGS as c
print(",".join(f"xraysyn[abr={r}+aw={w}]" for r, w in c))'
}
for stage in $stages; do
  start=$(date +%s)
  case $stage in
    tests)   timeout 150 python3 -m pytest -q -p no:cacheprovider -m "cuda or not cuda" \
               tests/test_projector_triton.py tests/test_physics_fused.py tests/test_physics_ct2xray.py \
               tests/test_physics_fused_ct2xray.py tests/test_projector_behaviour.py tests/test_projector_host_path.py \
               tests/test_projector_static_volume.py > "$OUT/tests.log" 2>&1
             tail -5 "$OUT/tests.log" ;;
    gputests) timeout 200 python3 -m pytest -q -p no:cacheprovider -m cuda \
               tests/test_projector_triton.py tests/test_physics_fused.py tests/test_physics_fused_ct2xray.py \
               tests/test_projector_host_path.py tests/test_projector_triton_random.py \
               tests/test_projector_empty_space.py > "$OUT/tests.log" 2>&1
             # each failure's one-line reason too: the reply's output tail keeps it if the files are lost
             grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)" "$OUT/tests.log" | cut -c1-400 ;;
    kernels) timeout 200 python3 benchmarks/gpu_kernels.py 2>&1 | tee "$OUT/kernels.jsonl" ;;
    host)    timeout 60 python3 benchmarks/host_overhead.py --calls 1000 2>&1 | tee "$OUT/host.jsonl" ;;
    api)     { timeout 150 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1 \
                 --impls naive-grid_sample,xraysyn,xraysyn-nocarry,xraysyn-reuse,xraysyn-reuse-nocopy,xraysyn-packed,xraysyn-reuse-packedadj \
                 --reps 10
               timeout 150 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 \
                 --impls xraysyn,xraysyn-nocarry,xraysyn-reuse,xraysyn-packed,xraysyn-reuse-packedadj --reps 10
             } 2>&1 | tee "$OUT/api.jsonl" ;;
    sweep)   # the Triton switches one at a time through the public API (forward, adjoint), then whole steps
             v="xraysyn,xraysyn[ft=4],xraysyn[fp=2],xraysyn[ft=4+fp=2]"
             a="xraysyn[at=4],xraysyn[carry=0],xraysyn[at=4+carry=0],xraysyn[ap=2],xraysyn[at=4+ap=2]"
             a="$a,xraysyn[ap=2+carry=0],xraysyn[at=4+ap=2+carry=0]"
             { timeout 110 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1 --reps 10 \
                 --modes fwd --impls "$v"
               timeout 110 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1 --reps 10 \
                 --modes adj --impls "xraysyn,$a"
               timeout 60 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1 --reps 10 \
                 --modes fwd+bwd --impls "xraysyn,xraysyn[ft=4+fp=2+ap=2],xraysyn[ft=4+fp=2+at=4+ap=2]"
               timeout 110 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 --reps 10 \
                 --modes fwd --impls "$v,xraysyn[fp=4],xraysyn[ft=4+fp=4]"
               timeout 110 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 --reps 10 \
                 --modes adj --impls "xraysyn,${a//ap=2/ap=4}"
               timeout 80 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 --reps 10 \
                 --modes fwd+bwd --impls "xraysyn,xraysyn[ft=4+fp=2+ap=4+carry=0],xraysyn[ft=4+fp=2+at=4+ap=4+carry=0],xraysyn[ft=4+ap=4+carry=0]"
             } 2>&1 | tee "$OUT/sweep.jsonl" ;;
    defaults) # the shipped switches: kernels alone (torch vs Triton-built rays, autotuned configs, the gather limit)
             # and the API with the volume work started ahead of the rays (default) and after them (ahead=0, as
             # measured before), the volume marked static, the ray set-up queued every call (kr=0: no kept ray
             # sets, what a training loop drawing new poses pays), and the plane carry across z (the trace stage times the
             # shipped defaults' adjoint and the plane carry across the rays' axis); adjoints do not read the volume,
             # so the volume variants are timed forward and forward+backward only
             # empty space skipping's brick (skip=0: off) on the forward, the W1 target's lever
             { timeout 120 python3 benchmarks/gpu_kernels.py --only "defaults,gather-only"
               timeout 100 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1,W2 \
                 --impls "xraysyn,xraysyn[skip=0],xraysyn[skip=2],xraysyn[skip=8]" --modes fwd --reps 10
               timeout 100 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1 \
                 --impls "xraysyn,xraysyn[ahead=0],xraysyn-static,xraysyn[kr=0]" --modes fwd,fwd+bwd --reps 10
               timeout 120 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 \
                 --impls "xraysyn,xraysyn[ahead=0],xraysyn-static,xraysyn[kr=0]" --modes fwd,fwd+bwd --reps 10
               timeout 110 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 \
                 --impls "xraysyn[cmax=4+plane=0],xraysyn[cmax=4+avi=1],xraysyn[fvi=1+avi=1]" --modes fwd+bwd,adj --reps 10
               timeout 60 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 \
                 --impls "xraysyn[fvi=1]" --modes fwd --reps 10
               # a non-square detector: tiled along its raster now, against runs of rays (what it got before)
               timeout 80 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2-rect \
                 --impls "xraysyn,xraysyn[ft=0+at=0]" --modes fwd,adj --reps 10
             } 2>&1 | tee "$OUT/defaults.jsonl" ;;
    trace)   # the shipped defaults through the public API, each case timed and then 3 calls profiled: where a call's
             # time goes (host lead, GPU busy, gaps, tail, per-kernel ms; benchmarks/trace_breakdown.py) — the W1
             # forward's distance to its target and the packed W2 adjoint's kernel-vs-API gap, kernel by kernel;
             # W2 also with the plane carry (cmax=4) and with the adjoint's programs interleaved over the views
             # (avi=1: a slab of the 139 MB packed buffer at a time instead of most of it, against a 60 MB L2);
             # W1 also without empty space skipping (skip=0)
             { timeout 100 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1 \
                 --impls "xraysyn,xraysyn[skip=0]" --modes fwd,fwd+bwd,adj --reps 10 --trace 3
               timeout 150 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 \
                 --impls "xraysyn,xraysyn[cmax=4],xraysyn[avi=1]" --modes fwd,fwd+bwd,adj --reps 10 --trace 3
             } 2>&1 | tee "$OUT/trace.jsonl" ;;
    core)    # the four targets with the shipped defaults, and the forward with each skipping brick (skip=0: off)
             { timeout 110 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1,W2 \
                 --impls "xraysyn,xraysyn[skip=0],xraysyn[skip=2],xraysyn[skip=8]" --modes fwd --reps 10
               timeout 90 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1,W2 \
                 --impls "xraysyn" --modes fwd+bwd,adj --reps 10
             } 2>&1 | tee "$OUT/core.jsonl" ;;
    adjw2)   # the W2 adjoint, the one target missed (session 9: fwd+bwd 28.6 ms, of which the adjoint kernel 22.4 ms):
             # kernel level in one process, the shipped defaults on torch- and Triton-built rays beside run s1's cases
             # with 4 slots (the adjoint that took 15.4 ms there: no carry, tiles 8); then through the API each launch
             # configuration pinned (the autotuner chose 256 rays and 8 warps; pinned runs carry nothing at 4 slots), the
             # shipped default (the autotuner also picks the plane carry; rows give its trials off / on) and without that
             # choice (tpc=0: carry off), the plane carry forced on (across the rays' axis, across z), tiles 8, and
             # both: the adjoint alone, and forward + backward for the likely winners
             { timeout 150 python3 benchmarks/gpu_kernels.py --workloads W2 --only "march-adj[defaults,packed4]"
               timeout 180 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 --modes adj \
                 --impls "xraysyn,xraysyn[tpc=0],$(pinned_adjoints),xraysyn[cmax=4],xraysyn[cmax=4+plane=0],xraysyn[at=8],xraysyn[at=8+cmax=4]" --reps 10
               timeout 90 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 --modes fwd+bwd \
                 --impls "xraysyn,xraysyn[tpc=0],xraysyn[at=8+cmax=4]" --reps 10
             } 2>&1 | tee "$OUT/adjw2.jsonl" ;;
    trace2)  # the packed W2 adjoint's kernel-vs-API gap alone, kernel by kernel (see trace)
             timeout 120 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 \
               --impls "xraysyn,xraysyn[avi=1]" --modes adj,fwd+bwd --reps 10 --trace 3 2>&1 | tee "$OUT/trace2.jsonl" ;;
    configs) # every launch configuration the autotuner tries, pinned, through the public API, next to the autotuned
             # default in the same run: is the packed adjoint's kernel-vs-API gap the autotuner's choice, and which
             # configuration is fastest where the API runs it (each row also says the configuration it ran)
             a="xraysyn,$(pinned_adjoints)"
             f=$(python3 -c 'from xraysyn.projector.triton_backend import _FORWARD_TUNING_CONFIGS as c
print(",".join(["xraysyn"] + [f"xraysyn[fbr={r}+fw={w}+fu={u}]" for r, w, u in c]))')
             { timeout 90 python3 benchmarks/gpu_kernels.py --only ct2xray
               timeout 110 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W2 --reps 10 \
                 --modes adj --impls "$a"
               timeout 80 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1 --reps 10 \
                 --modes adj --impls "$a"
               timeout 90 python3 benchmarks/projector.py --device cuda --volumes .gpu/vols --workloads W1 --reps 10 \
                 --modes fwd --impls "$f"
             } 2>&1 | tee "$OUT/configs.jsonl" ;;
    peers)   PYTHONPATH=$PYTHONPATH:$PWD/.gpu/bench/stub PEERS_VOLUMES=$PWD/.gpu/vols \
               timeout 80 python3 .gpu/bench/peers_gpu.py nanodrr flashdrr 2>&1 | tee "$OUT/peers.jsonl" ;;
    step)    [ -f benchmarks/train_step.py ] && timeout 150 python3 benchmarks/train_step.py --device cuda 2>&1 | tee "$OUT/step.jsonl" ;;
  esac
  echo "stage $stage: $(( $(date +%s) - start )) s" | tee -a "$OUT/stages.txt"
done
# the tables of everything timed, last, so the reply's output tail holds them even if the files do not survive
python3 benchmarks/gpu_report.py "$OUT"/*.jsonl 2>&1 | cut -c1-300 | tail -80
