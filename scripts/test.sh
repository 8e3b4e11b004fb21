#!/usr/bin/env bash
# The test command of the README, and all that .ci/run does: install (with the tensorboard extra, so
# the TensorBoard logger's test runs), then run every test tier.
#   1. the default tier (fast, CPU)            pytest
#   2. the slow tier                            pytest -m slow
#   3. the SLURM tier, against a real one-node cluster that this script starts and always stops
# GPU tests (-m gpu) run only where CUDA is present; elsewhere they are skipped with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -e '.[test,tensorboard,timm]'

# Fashion-MNIST, the real data set of the accuracy study and its tests: Debian's package, the
# original IDX files (bench/measure/data.py reads them from /usr/share/datasets/fashion-mnist).
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

# Chromium, Debian's package: tests/test_report_browser.py opens a generated report.html in it
# headless (screenshot, every image loaded); the test is skipped where it is missing.
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

python3 -m pytest
python3 -m pytest -m slow

if [ "${VTBENCH_SKIP_SLURM:-0}" = 1 ]; then
  echo "VTBENCH_SKIP_SLURM=1: SLURM tier skipped on request"
  exit 0
fi
bash scripts/slurm_cluster.sh install
state_dir=$(mktemp -d /tmp/vtbench-slurm.XXXXXX)
trap 'bash scripts/slurm_cluster.sh stop "$state_dir"' EXIT
bash scripts/slurm_cluster.sh start "$state_dir"
SLURM_CONF="$state_dir/slurm.conf" python3 -m pytest -m slurm
