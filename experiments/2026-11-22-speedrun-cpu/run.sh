#!/usr/bin/env bash
# The study's exact commands, from the repository root, with the venv active:
#   source .venv/bin/activate && bash experiments/2026-11-22-speedrun-cpu/run.sh
# 11 arms x 3 seeds: the speedrun recipe, its 9 leave-one-out ablations (one key each, set
# back to the baseline's value) and the baseline recipe; about 35 minutes on 2 CPU cores.
# Nothing else may run meanwhile: the report compares wall times.
# Re-running skips what is already done (the registry in outputs/).
set -euo pipefail
study=outputs/multirun/study-speedrun-cpu
seeds=1337,0,1
common="trainer.enable_progress_bar=false sample.max_new_tokens=0"
python lm/train.py -m experiment=speedrun_cpu seed=$seeds $common hydra.sweep.dir=$study/speedrun
for ablation in model.pos_encoding=learned model.norm=layernorm model.qk_norm=false \
        model.activation=gelu model.tie_weights=true model.zero_init_proj=false \
        model.logit_softcap=null optimizer=adamw scheduler=cosine; do
    name=minus_${ablation//[=.]/_}
    python lm/train.py -m experiment=speedrun_cpu "$ablation" seed=$seeds $common \
        hydra.sweep.dir=$study/$name
done
python lm/train.py -m experiment=baseline seed=$seeds $common hydra.sweep.dir=$study/baseline
python -m lm compare $study/speedrun $study/minus_* $study/baseline --target 1.8851 \
    --out experiments/2026-11-22-speedrun-cpu
