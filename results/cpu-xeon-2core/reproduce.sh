#!/usr/bin/env bash
# Reproduces every number in results/cpu-xeon-2core: the three Fashion-MNIST analogues at the
# small preset (DVN + independent networks of each level's size, seed 0, cpu backend), their
# evaluations (table, plots) and the joint-objective throughput benchmark.
#   results/cpu-xeon-2core/reproduce.sh [lane]   lane = a | b | eval | bench | all (default)
# Lanes a and b are independent (run them side by side with one thread each on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
R=runs/small
T="--preset small --backend cpu --seed 0 --quiet --threads ${THREADS:-1}"
train() { python -m dvn train "${@:2}" $T --out "$1" --resume; }
lane_a() {
  train $R/joint fmnist-joint
  for c in 1:2 2:2 1:1 2:1; do train $R/joint-${c/:/l} fmnist-joint --only $c; done
}
lane_b() {
  train $R/seq-old fmnist-seq --only 1:1 --only 1:2     # the old network: task 1, every level
  train $R/seq fmnist-seq --teacher $R/seq-old
  train $R/seq-2l2 fmnist-seq --only 2:2                 # independent network, new task
  train $R/hier fmnist-hier
  for c in 1:2 2:2 1:1 2:1; do train $R/hier-${c/:/l} fmnist-hier --only $c; done
}
evaluate() {
  O=results/cpu-xeon-2core
  E="--quiet --threads 1 --backend cpu"
  python -m dvn eval $R/joint --out $O/fmnist-joint $E \
    $(for c in 1l2 2l2 1l1 2l1; do echo --baseline $R/joint-$c; done)
  python -m dvn eval $R/hier --out $O/fmnist-hier $E \
    $(for c in 1l2 2l2 1l1 2l1; do echo --baseline $R/hier-$c; done)
  python -m dvn eval $R/seq --out $O/fmnist-seq $E --baseline $R/seq-old --baseline $R/seq-2l2
}
bench() {
  python -m dvn bench --units 2 4 --out results/cpu-xeon-2core --quiet
  python -m dvn bench --units 2 4 --steps 11 --out results/cpu-xeon-2core/bench-11steps --quiet
}
case "${1:-all}" in
  a) lane_a ;; b) lane_b ;; eval) evaluate ;; bench) bench ;;
  all) lane_a; lane_b; evaluate; bench ;;
esac
