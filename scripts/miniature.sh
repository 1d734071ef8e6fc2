#!/usr/bin/env bash
# The paper's claims in miniature (issue 18; README "Results in miniature"), unattended:
#   1. rlrt compare over grpo, rlrt, rlrt_all and rlsd, 3 seeds each, on Countdown
#      (configs/miniature/countdown.yaml: tiny Qwen3, SFT warm-up once in $OUT/work, 100 RL steps
#      per run, held-out 128 problems x 64 samples before and after every run);
#   2. grpo vs rlrt again, $SEEDS seeds each, from a model whose warm-up also showed solutions in
#      the teacher's view, so that the teacher can read its context
#      (configs/miniature/countdown_teacher_view.yaml, in ${OUT}_teacher_view);
#   3. the eps_w sweep: rlrt at eps_w 0.2 and 0.5 (1.0 is step 1's rlrt), from the same
#      warmed-up model (quickstart.work_dir), $SWEEP_SEEDS seeds each (3), in ${OUT}_eps_w<value>;
#   4. both warmed-up models' pass@k against a uniform guesser, and whether they read a solution
#      in the teacher's view (benchmarks/miniature_feasibility.py);
#   5. the report: tables, collapse check, verdicts ($OUT/report.md) and the figures in
#      docs/figures/miniature/.
# Every step resumes: finished runs are not rerun, an interrupted one continues from its
# checkpoint. About 2.5 h on a quiet 2-core machine (24 runs of 5-6 min each with the defaults,
# plus two warm-ups of 3 and 5 minutes); SEEDS / SWEEP_SEEDS / OUT override the defaults.
# Usage: scripts/miniature.sh   (from the repository root, after `make setup`)
set -euo pipefail
RLRT=${RLRT:-.venv/bin/rlrt}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/miniature}
SEEDS=${SEEDS:-3}
SWEEP_SEEDS=${SWEEP_SEEDS:-$SEEDS}
CONFIG=configs/miniature/countdown.yaml

"$RLRT" compare "$CONFIG" trainer.console=false \
    --methods grpo,rlrt,rlrt_all,rlsd --seeds "$SEEDS" --output "$OUT"
"$RLRT" compare configs/miniature/countdown_teacher_view.yaml trainer.console=false \
    --methods grpo,rlrt --seeds "$SEEDS" --output "${OUT}_teacher_view"
for eps in 0.2 0.5; do
    "$RLRT" compare "$CONFIG" trainer.console=false quickstart.work_dir="$OUT/work" \
        algorithm.eps_w="$eps" --methods rlrt --seeds "$SWEEP_SEEDS" --output "${OUT}_eps_w$eps"
done
"$PY" benchmarks/miniature_feasibility.py --config "$CONFIG" --work "$OUT/work" \
    --json "$OUT/feasibility.json"
"$PY" benchmarks/miniature_feasibility.py --config configs/miniature/countdown_teacher_view.yaml \
    --work "${OUT}_teacher_view/work" --json "${OUT}_teacher_view/feasibility.json"
"$PY" scripts/miniature_report.py --output "$OUT" --figures docs/figures/miniature
