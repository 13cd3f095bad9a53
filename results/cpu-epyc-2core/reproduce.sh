#!/usr/bin/env bash
# Reproduces every number in results/cpu-epyc-2core: the three Fashion-MNIST analogues at the
# small preset (the DVN and independent networks of each level's size, seed 0, cpu backend)
# and their evaluations (tables, plots); lane ablation: the recipes compared in README.md
# (after the joint and seq lanes, whose runs it reuses).
#   results/cpu-epyc-2core/reproduce.sh [lane]
#   lane = joint | seq | hier | eval | all (default: those four) | ablation
# Runs go to runs/small (RUNS=... to change); a killed lane continues where it stopped.
# THREADS=N sets torch's threads for training and evaluation (default: torch's, all cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
R="${RUNS:-runs/small}"
O=results/cpu-epyc-2core
T=(--preset small --backend cpu --seed 0 --quiet ${THREADS:+--threads "$THREADS"})
train() {  # train OUT SCENARIO [options...]; the options given win over T's
  local out=$1 scenario=$2
  shift 2
  python -m dvn train "$scenario" "${T[@]}" "$@" --out "$out" --resume
}
lane_joint() {
  train "$R/joint" fmnist-joint
  for c in 1:2 2:2 1:1 2:1; do train "$R/joint-${c/:/l}" fmnist-joint --only "$c"; done
}
lane_seq() {
  train "$R/seq-old" fmnist-seq --only 1:1 --only 1:2   # the old network: task 1, every level
  train "$R/seq" fmnist-seq --teacher "$R/seq-old"
  train "$R/seq-2l2" fmnist-seq --only 2:2                # independent network, new task
}
lane_hier() {
  train "$R/hier" fmnist-hier
  for c in 1:2 2:2 1:1 2:1; do train "$R/hier-${c/:/l}" fmnist-hier --only "$c"; done
}
evaluate() {
  E=(--quiet --backend cpu ${THREADS:+--threads "$THREADS"})
  python -m dvn eval "$R/joint" --out "$O/fmnist-joint" "${E[@]}" \
    $(for c in 1l2 2l2 1l1 2l1; do echo --baseline "$R/joint-$c"; done)
  python -m dvn eval "$R/hier" --out "$O/fmnist-hier" "${E[@]}" \
    $(for c in 1l2 2l2 1l1 2l1; do echo --baseline "$R/hier-$c"; done)
  python -m dvn eval "$R/seq" --out "$O/fmnist-seq" "${E[@]}" \
    --baseline "$R/seq-old" --baseline "$R/seq-2l2"
}
lane_ablation() {
  A="$R/ablation"
  E=(--quiet --backend cpu --no-latency ${THREADS:+--threads "$THREADS"})
  # fmnist-joint, one change at a time from the old small preset to the current one
  OLD=(--set train_subset=6000 --set augment=true --set input_sizes=28,28)
  train "$A/joint-before" fmnist-joint "${OLD[@]}" --set batch_size=128 --set schedule=step \
    --set warmup=0
  train "$A/joint-batch64-linear" fmnist-joint "${OLD[@]}"
  train "$A/joint-20k-digits16" fmnist-joint --set augment=true
  for x in joint-before joint-batch64-linear joint-20k-digits16; do
    python -m dvn eval "$A/$x" --out "$O/ablation/$x" "${E[@]}"
  done
  # fmnist-seq: the new-task stage against the same old network (lane seq)
  train "$A/seq-no-warmup" fmnist-seq --teacher "$R/seq-old" --set lwf_warmup=0 \
    --set distill_weight=1
  train "$A/seq-warmup30" fmnist-seq --teacher "$R/seq-old" --set distill_weight=1
  train "$A/seq-warmup30-seed1" fmnist-seq --teacher "$R/seq-old" --set distill_weight=1 \
    --seed 1
  train "$A/seq-warmup50" fmnist-seq --teacher "$R/seq-old" --set lwf_warmup=0.5 \
    --set distill_weight=1
  train "$A/seq-seed1" fmnist-seq --teacher "$R/seq-old" --seed 1
  for x in seq-no-warmup seq-warmup30 seq-warmup30-seed1 seq-warmup50 seq-seed1; do
    python -m dvn eval "$A/$x" --out "$O/ablation/$x" "${E[@]}" \
      --baseline "$R/seq-old" --baseline "$R/seq-2l2"
  done
}
case "${1:-all}" in
  joint) lane_joint ;; seq) lane_seq ;; hier) lane_hier ;; eval) evaluate ;;
  ablation) lane_ablation ;;
  all) lane_joint; lane_seq; lane_hier; evaluate ;;
  *) echo "usage: $0 [joint|seq|hier|eval|all|ablation]" >&2; exit 2 ;;
esac
