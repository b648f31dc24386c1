#!/usr/bin/env bash
# Full fine-tuning, LoRA and QLoRA side by side: the `make train` model adapted to the
# First Folio spelling (data=folio), 3 seeds per arm, then lm compare.
#   bash experiments/2026-11-22-finetune/run.sh      (from the repository root, after make train)
# Each run is its own process, so its peak memory is its own. Nothing else should run
# on the machine meanwhile: wall times are compared.
set -euo pipefail
cd "$(dirname "$0")/../.."
source .venv/bin/activate
STUDY=outputs/study-finetune
HERE=experiments/2026-11-22-finetune

# The pretrained model: make train's run (the registry skips it if it exists and points
# the pretrain dir at it).
python lm/train.py hydra.run.dir=$STUDY/pretrain
BASE=$(python -c "import json; print(json.load(open('$STUDY/pretrain/run.json'))['checkpoints']['best'])")
echo "base checkpoint: $BASE"

for arm in full lora qlora; do
  for seed in 1337 0 1; do
    python lm/train.py experiment=finetune_$arm init_from=$BASE seed=$seed \
      trainer.enable_progress_bar=false hydra.run.dir=$STUDY/$arm/$seed
  done
done

# The pretrained model and each fine-tune on the whole Folio validation split.
{
  echo "# lm evaluate full=true on the Folio validation split (448,584 characters)"
  echo "## pretrained: $BASE"
  lm evaluate ckpt=$BASE data=folio full=true
  for arm in full lora qlora; do
    for seed in 1337 0 1; do
      ckpt=$(python -c "import json; print(json.load(open('$STUDY/$arm/$seed/run.json'))['checkpoints']['best'])")
      echo "## $arm seed $seed: $ckpt"
      lm evaluate ckpt=$ckpt full=true
    done
  done
} | tee $HERE/evaluate_full.txt

lm compare $STUDY/full $STUDY/lora $STUDY/qlora --out $HERE
ls -l $STUDY/*/1337/checkpoints | tee $HERE/checkpoint_sizes.txt
