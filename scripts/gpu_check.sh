#!/usr/bin/env bash
# Every check that needs a GPU, in one or two calls (the phases' limits add up to about 19 minutes;
# GPU_CHECK_PHASES picks some): the `gpu` tests and the GPU
# benchmarks, with every result in one folder.
#
#   bash scripts/gpu_check.sh [DIR]          results in DIR (default runs/gpu_check)
#   bash scripts/gpu_check.sh --wheels       (on a machine with PyPI) build the pure-Python
#                                            dependencies into .whl/ for a machine without one
#
# Phases, each under its own time limit so that one slow phase cannot eat the others' time; the
# folder is packed into $OUT/gpu_check.tar.gz after every phase when OUT is set (the lent-device
# tool returns what is under $OUT, also after a time-out):
#   env        nvidia-smi, torch/CUDA/cuDNN versions                          -> env.txt
#   tests      pytest -m gpu (tests/test_gpu.py, the gpu tests of test_latency.py) -> tests.log, junit.xml
#   speed      vtbench speed --gpu: R18/R50 pairs, bf16, batch 1/64/256, eager and CUDA graphs, with
#              the card's measured GEMM and copy ceilings                     -> speed_gpu/
#              (each speed phase is a run folder: the grid's cells through the runner, then
#              `vtbench interleave --stages --peak`, then the report: speed_gpu/report/report.md,
#              its "Speed" sections, and report/speed.csv)
#   fpn        FPN-R50 vs VT-FPN-R50 at 473x473, batch 1 and 8                -> speed_gpu_fpn/
#   compile_*  torch.compile (inductor), R18 then R50 pair, batch 1/64/256    -> speed_gpu_compile_r18/, _r50/
# phases.txt lists each phase's exit code and wall time. GPU_CHECK_PHASES="speed fpn" runs only the
# phases named (a rerun of what a first call did not finish). Nothing here changes the card's settings.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--wheels" ]; then
  python3 -m pip wheel --no-deps -q -w .whl fvcore==0.1.5.post20221221 iopath==0.1.10 yacs termcolor submitit
  ls .whl
  exit 0
fi

dest=${1:-runs/gpu_check}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
export PYTHONUNBUFFERED=1
export VTBENCH_GIT_COMMIT=${VTBENCH_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}

# fvcore and submitit are not in every CUDA image; without a registry they come as wheels (.whl/).
if ! python3 -c 'import fvcore, submitit' 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/vtbench-site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/vtbench-site${PYTHONPATH:+:$PYTHONPATH}
  else
    python3 -m pip install -q -e '.[test]' || exit 1
  fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

pack() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu_check.tar.gz" -C "$(dirname "$dest")" "$(basename "$dest")"
    cp "$dest/phases.txt" "$OUT/phases.txt" 2>/dev/null || true
  fi
}

phase() {  # phase NAME LIMIT_S COMMAND...: run it into NAME.log, record rc and time, show its end
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  if [ -n "${GPU_CHECK_PHASES:-}" ] && [[ " $GPU_CHECK_PHASES " != *" $name "* ]]; then
    return 0
  fi
  echo "== $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >"$dest/$name.log" 2>&1
  rc=$?
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$dest/phases.txt"
  tail -n 25 "$dest/$name.log"
  pack
}

: >"$dest/phases.txt"
speed=(python3 -m bench speed --gpu --channels-last --quick)
phase env 60 bash -c 'nvidia-smi; python3 -c "import torch, torchvision, sys; print(sys.version); \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"cudnn\", torch.backends.cudnn.version(), \
\"torchvision\", torchvision.__version__); print(torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))"'
[ -f "$dest/env.log" ] && cp "$dest/env.log" "$dest/env.txt"
phase tests 160 python3 -m pytest -m gpu -p no:cacheprovider -q -rs --junitxml="$dest/junit.xml" \
  tests/test_gpu.py tests/test_latency.py
phase speed 300 "${speed[@]}" --modes eager,cuda_graphs --rounds 3 --out "$dest/speed_gpu"
phase fpn 120 "${speed[@]}" --pairs fpn --batch-sizes 1,8 --modes eager,cuda_graphs --rounds 3 \
  --out "$dest/speed_gpu_fpn"
for pair in r18 r50; do
  phase "compile_$pair" 240 "${speed[@]}" --pairs "$pair" --modes compile --batch-sizes 1,64,256 --rounds 3 \
    --out "$dest/speed_gpu_compile_$pair"
done
echo "== done: $dest"
cat "$dest/phases.txt"
