#!/usr/bin/env bash
# The first step of crystext's default model (recipes/scratch_small; until it learnt to follow prompts, the whole
# recipe): scratch-small (LLaMA architecture, ~6.5M parameters, the project's word-level tokenizer) on MP-20
# train + val, 5% held out for the validation loss, multitask (generation with random attributes + 1/3 infill), seed 0.
# Coordinates are kept as written (--no-translate): a 6.5M-parameter model with a few epochs learns
# the special positions (0, 1/4, 1/3, 1/2, ...) crystals sit on, where random shifts would ask it to
# learn modular arithmetic first; the paper's shift augmentation suits large pretrained models.
#
#   bash recipes/scratch_small.sh [DATA_DIR] [OUT]      # start, or continue after a kill
#
# On 2 CPU cores an epoch takes about 13 minutes and the six about 90 (benchmarks/results/train_scratch-small.md).
# The best checkpoint (lowest validation loss) is then written in float16 to recipes/scratch_small. The default model
# (src/crystext/default_model) continues it with recipes/conditional_model.sh; its model card lists every step.
set -euo pipefail
data=${1:-../shared/data/mp_20}
out=${2:-runs/default}
resume=()
[ -f "$out/checkpoints/last/trainer_state.pt" ] && resume=(--resume)
crystext train --model scratch-small --data-dir "$data" --splits train,val --holdout 0.05 \
    --epochs "${EPOCHS:-6}" --batch-size 16 --learning-rate 1e-3 --warmup-steps 50 \
    --no-translate --eval-every 200 --save-every 50 --seed 0 --out "$out" "${resume[@]}"
python -c "import sys; from crystext.model import export_model; export_model(sys.argv[1], 'recipes/scratch_small')" "$out"
