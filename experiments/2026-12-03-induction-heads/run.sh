#!/usr/bin/env bash
# The study's exact commands, from the repository root, with the venv active:
#   source .venv/bin/activate && bash experiments/2026-12-03-induction-heads/run.sh
# Attention-only transformers (experiment=induction_heads: 4 heads, 128 wide, 256-character
# contexts, 1500 steps of 16 windows, a checkpoint every 50 steps), 3 seeds per arm:
#   one_layer   1 layer on Shakespeare (characters): no head can compose with an earlier one
#   two_layers  2 layers on Shakespeare
#   control     2 layers on random letters, each line's 10-40 letters twice (random_repeats.py):
#               text only an induction head can predict, to show what a phase change looks
#               like in these measurements; RoPE, 64-character contexts, 32 windows a step,
#               3000 steps (the settings under which it forms here)
# About 25 minutes on 2 CPU cores. Re-running skips what is already done (the registry).
set -euo pipefail
here=experiments/2026-12-03-induction-heads
study=outputs/multirun/study-induction-heads
seeds=1,2,3
common="trainer.enable_progress_bar=false sample.max_new_tokens=0"
python lm/train.py -m experiment=induction_heads model.n_layer=1 seed=$seeds $common \
    hydra.sweep.dir=$study/one_layer
python lm/train.py -m experiment=induction_heads model.n_layer=2 seed=$seeds $common \
    hydra.sweep.dir=$study/two_layers
test -f data/random_repeats.txt || python $here/random_repeats.py data/random_repeats.txt
python lm/train.py -m experiment=induction_heads data=text_file data.path=data/random_repeats.txt \
    model.pos_encoding=rope model.block_size=64 data.batch_size=32 trainer.max_steps=3000 \
    seed=$seeds $common hydra.sweep.dir=$study/control
# final val/loss of the two Shakespeare arms, 95% CIs over the seeds (1 layer = baseline)
lm compare $study/one_layer $study/two_layers --out $here
# across training, from every snapshot: in-context loss, induction scores, training loss
python $here/across_training.py $study/one_layer $study/two_layers $study/control --out $here
# the heads of final models, and an induction head's attention on a repeated random sequence
for arm in one_layer two_layers control; do
    ckpt=$(ls $study/$arm/0-seed:1-*/checkpoints/last.ckpt)
    lm analyze ckpt=$ckpt kind=heads random_tokens=30 out=$here/heads_$arm
done
lm analyze ckpt=$(ls $study/control/0-seed:1-*/checkpoints/last.ckpt) kind=attention \
    random_tokens=30 out=$here/attention_control
lm analyze ckpt=$(ls $study/two_layers/0-seed:1-*/checkpoints/last.ckpt) kind=attention \
    random_tokens=30 out=$here/attention_two_layers
