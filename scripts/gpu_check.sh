#!/usr/bin/env bash
# Every check that needs a GPU, in one call that fits 8 minutes: the `gpu` tests and the GPU
# benchmarks of the issue's protocol, each phase under its own time limit, every result in one folder.
#
#   bash scripts/gpu_check.sh [DIR]            results in DIR (default runs/gpu_check)
#   bash scripts/gpu_check.sh --dry-run [DIR]  (or GPU_CHECK_DRY_RUN=1) on a CPU: every phase's command
#                                              in its cheapest form (the gpu tests collected, each speed
#                                              phase's GPU grid built and checked by `vtbench speed
#                                              --dry-run`), so that a broken phase fails in CI
#   bash scripts/gpu_check.sh --wheels         (on a machine with PyPI) build the pure-Python
#                                              dependencies into .whl/ for a machine without one
#
# Phases and limits (seconds; 30 + 60 + 170 + 100 + 40 + 50 = 450, the rest of 8 minutes for the
# set-up). Each speed phase is a run folder of the one flow (`vtbench speed`: the grid's cells through
# the runner in this process, `vtbench interleave --stages --peak`, the report in DIR/NAME/report
# with its speed sections and speed.csv, speed_stages.csv); stage times of CUDA-graph cells are
# per-stage graphs (bench.measure.stages), with each stage's roofline bound at the card's measured
# ceilings. All at bf16, channels_last, --quick:
#   env      nvidia-smi, torch/CUDA/cuDNN versions, the card                    -> env.txt
#   tests    pytest -m gpu over every test file that has a gpu test             -> tests.log, junit.xml
#   speed    R18 and R50 pairs, batch 64 and 256, CUDA graphs, 3 rounds, each VT  -> speed_gpu/
#            model in the reference and the fused attention form (--forms)
#   compile  R18 pair, batch 64, torch.compile reduce-overhead and max-autotune  -> speed_gpu_compile/
#   flush    R18 pair, batch 1 and 64, CUDA graphs, a cold L2 per iteration      -> speed_gpu_flush/
#   fpn      FPN-R50 vs VT-FPN-R50 at 473x473, batch 8, CUDA graphs, both forms  -> speed_gpu_fpn/
# (eager and default compile cells, batch 1 and the full grid: `vtbench speed --gpu`, a longer run.)
# phases.txt lists each phase's exit status and wall time; the script exits 1 when a phase failed.
# GPU_CHECK_PHASES="speed fpn" runs only the phases named. When OUT is set (the lent-device tool
# returns what is under $OUT, also after a time-out) the folder is packed into $OUT/gpu_check.tar.gz
# after every phase. Nothing here changes the card's settings.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--wheels" ]; then
  python3 -m pip wheel --no-deps -q -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10 yacs termcolor submitit
  ls .whl
  exit 0
fi
dry_run=${GPU_CHECK_DRY_RUN:-0}
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi

dest=${1:-runs/gpu_check}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
export PYTHONUNBUFFERED=1
export VTBENCH_GIT_COMMIT=${VTBENCH_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

# fvcore and submitit are not in every CUDA image; without a registry they come as wheels (.whl/).
if ! python3 -c 'import fvcore, submitit' 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/vtbench-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/vtbench-site${PYTHONPATH:+:$PYTHONPATH}
  else
    timeout 120 python3 -m pip install -q -e '.[test]' || exit 1
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

pack() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_check.tar.gz" -C "$(dirname "$dest")" "$(basename "$dest")"
    cp "$dest/phases.txt" "$OUT/phases.txt" 2>/dev/null || true
  fi
}

failed=0
phase() {  # phase NAME LIMIT_S COMMAND...: run it into NAME.log, record rc and time, show its end
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  if [ -n "${GPU_CHECK_PHASES:-}" ] && [[ " $GPU_CHECK_PHASES " != *" $name "* ]]; then
    return 0
  fi
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$dest/$name.log" 2>&1
  rc=$?
  [ "$rc" -eq 0 ] || failed=1
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$dest/phases.txt"
  tail -n 25 "$dest/$name.log"
  pack
}

: >"$dest/phases.txt"
# The cells run in this process (--cluster debug): no interpreter and CUDA start-up per cell.
speed=(python3 -m bench speed --gpu --channels-last --quick --cluster debug)
mapfile -t gpu_test_files < <(grep -l 'pytest.mark.gpu' tests/test_*.py)
gpu_tests=(python3 -m pytest -m gpu -p no:cacheprovider -q -rs --junitxml="$dest/junit.xml" "${gpu_test_files[@]}")
if [ "$dry_run" = 1 ]; then
  echo "dry run: the gpu tests are collected, each speed phase's grid is built and checked; nothing is timed"
  speed+=(--dry-run)
  gpu_tests+=(--collect-only)
fi

phase env 30 python3 -c 'import sys, torch, torchvision, subprocess, shutil
print(sys.version)
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "torchvision", torchvision.__version__)
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout)
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
else:
    print("no CUDA device")'
[ -f "$dest/env.log" ] && cp "$dest/env.log" "$dest/env.txt"
phase tests 60 "${gpu_tests[@]}"
phase speed 170 "${speed[@]}" --pairs r18,r50 --batch-size 64,256 --modes cuda_graphs --rounds 3 \
  --forms reference,fused --out "$dest/speed_gpu"
phase compile 100 "${speed[@]}" --pairs r18 --batch-size 64 --modes compile_reduce_overhead,compile_max_autotune \
  --rounds 2 --out "$dest/speed_gpu_compile"
phase flush 40 "${speed[@]}" --pairs r18 --batch-size 1,64 --modes cuda_graphs --flush-l2 --rounds 2 \
  --out "$dest/speed_gpu_flush"
phase fpn 50 "${speed[@]}" --pairs fpn --batch-size 8 --modes cuda_graphs --rounds 2 --forms reference,fused \
  --out "$dest/speed_gpu_fpn"
echo "== done: $dest"
cat "$dest/phases.txt"
exit "$failed"
