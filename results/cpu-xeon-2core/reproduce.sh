#!/usr/bin/env bash
# Reproduces every number in results/cpu-xeon-2core: the joint-objective training throughput
# benchmark (cpu backend vs the masked twin). The training results of the current small preset
# are in results/cpu-epyc-2core (its reproduce.sh).
#   results/cpu-xeon-2core/reproduce.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. .venv/bin/activate
bench() {
  python -m dvn bench --units 2 4 --out results/cpu-xeon-2core --quiet
  python -m dvn bench --units 2 4 --steps 11 --out results/cpu-xeon-2core/bench-11steps --quiet
}
bench
