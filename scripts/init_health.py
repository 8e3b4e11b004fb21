"""Step-0 health of VT models under trunk-init candidates, as tests/test_init_health.py measures it.

For each model, candidate (`models.init.RESIDUAL_INITS`) and seed: one seeded random batch in train
mode (224x224 x4 for classification, 128x128 x2 for segmentation), then `models.health.init_health`:
each tokenizer's mean peak attention (bar: <= 0.5), the largest cosine between two tokens of a module
(bar: <= 0.99 on the test's seed-0 batch), the fraction of near-duplicate token pairs (bar: <= 1 %),
the weakest token-space gradient relative to the largest (bar: >= 1e-3) and the cross-entropy (bar:
within 2x of ln(classes)). One line per (model, candidate, seed); a failed bar is marked.

    python scripts/init_health.py --models vt_resnet18 vt_resnet50 --inits zero zero_stage4 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math

import torch

from models.health import step0_health
from models.init import RESIDUAL_INITS

PEAK_MAX, COSINE_MAX, DUPLICATES_MAX, GRAD_RATIO_MIN, LOSS_FACTOR = 0.5, 0.99, 0.01, 1e-3, 2.0


def failed_bars(h) -> list[str]:
    chance = math.log(h.num_classes)
    checks = {"peak": max(h.peak_attention) <= PEAK_MAX, "cosine": max(h.max_token_cosine) <= COSINE_MAX,
              "duplicates": max(h.duplicate_pair_fraction) <= DUPLICATES_MAX,
              "gradient": h.weakest_gradient_ratio >= GRAD_RATIO_MIN and not h.zero_grad_weights,
              "loss": chance / LOSS_FACTOR <= h.loss <= chance * LOSS_FACTOR}
    return [bar for bar, ok in checks.items() if not ok]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vt_resnet18", "vt_resnet50"])
    parser.add_argument("--inits", nargs="+", default=list(RESIDUAL_INITS), choices=list(RESIDUAL_INITS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("model | init | seed | peak attention | max token cosine | duplicate pairs | weakest grad | loss | failed")
    for name in args.models:
        for init in args.inits:
            for seed in args.seeds:
                h = step0_health(name, seed, init)
                print(f"{name} | {init} | {seed} | {max(h.peak_attention):.3f} | {max(h.max_token_cosine):.3f} | "
                      f"{100 * max(h.duplicate_pair_fraction):.2f} % | {h.weakest_gradient_ratio:.4f} | {h.loss:.2f} | "
                      f"{', '.join(failed_bars(h)) or '-'}", flush=True)


if __name__ == "__main__":
    main()
