#!/usr/bin/env bash
# The study's exact commands, from the repository root: bash experiments/2026-11-21-grad-clip-and-positions/run.sh
# Three sweeps of three seeds, model=small, 2000 steps each (about 15 minutes on 2 CPU cores),
# then the report. Re-running skips what is already done (the registry in outputs/).
set -euo pipefail
study=outputs/multirun/study-grad-clip-and-positions
python lm/train.py -m model=small seed=0,1,2 trainer.enable_progress_bar=false \
    hydra.sweep.dir=$study/baseline
python lm/train.py -m model=small seed=0,1,2 hooks=grad_clip_custom trainer.enable_progress_bar=false \
    hydra.sweep.dir=$study/grad_clip_custom
python lm/train.py -m model=small seed=0,1,2 model.pos_encoding=sinusoidal trainer.enable_progress_bar=false \
    hydra.sweep.dir=$study/sinusoidal
python -m lm compare $study/baseline $study/grad_clip_custom $study/sinusoidal \
    --out experiments/2026-11-21-grad-clip-and-positions
