#!/usr/bin/env bash
# Judge a candidate default model on the benchmarks the shipped model's rows came from, so the two compare:
#   conditional generation (300 prompts per kind, 50 stability prompts relaxed, 50 infills),
#   how much it reads its prompt (100 rows),
#   Table 1 at T 0.7 with the sampler's constraints and with the grammar alone (n 1,000, CDVAE protocol),
#   and stability as a tuning round judges it (300 attempts, CHGNet, steps budget; the shipped model's row is
#   tune_eval_shipped_first300).
#
#   bash benchmarks/candidate.sh MODEL NAME        # rerun the same command to continue after a kill
#   TUNE_EVAL=0 bash benchmarks/candidate.sh MODEL NAME    # without the tuning round's relaxations (the longest part)
#
# Two lanes of one thread each (the two lists above), 45 minutes on 2 CPU cores before the relaxations, which take
# longer than the rest together. Results go to benchmarks/results/*_NAME*, samples and relaxations to
# runs/candidate_NAME/, each lane's log beside them.
set -euo pipefail
model=$1
name=$2
work=runs/candidate_$name
here=$(dirname "$0")
mkdir -p "$work"
export OMP_NUM_THREADS=1
(
    python "$here/conditional.py" "$model" --name "$name" --work "$work/conditional"
    python "$here/prompt_use.py" "$model" --rows 100 --name "$name"
) > "$work/lane_prompts.log" 2>&1 &
prompts=$!
(
    python "$here/table1.py" "$model" --n 1000 --stability-n 0 --runs T0.7 T0.7_grammar_only \
        --work "$work/table1" --name "${name}_n1000"
    if [ "${TUNE_EVAL:-1}" != 0 ]; then
        python "$here/tune_eval.py" "$model" --n 300 --name "${name}_first300" --work "$work/tune_eval" --workers 1 \
            --note "The first 300 of the seeded attempts tune_eval draws, the same seeds as shipped_first300's."
    fi
) > "$work/lane_unconditional.log" 2>&1 &
unconditional=$!
status=0
wait $prompts || { echo "conditional lane failed: $work/lane_prompts.log" >&2; status=1; }
wait $unconditional || { echo "unconditional lane failed: $work/lane_unconditional.log" >&2; status=1; }
exit $status
