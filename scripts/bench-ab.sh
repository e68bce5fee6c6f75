#!/usr/bin/env bash
# Compares a benchmark of another revision (before) with this checkout
# (after) on one machine in one session, alternating before and after runs
# so that a change in the machine's load falls on both:
#
#   scripts/bench-ab.sh REV BENCHMARK [ROUNDS] [-- FLAGS...]
#   scripts/bench-ab.sh main transport 2
#   scripts/bench-ab.sh main lock 2 -- -systems mesh
#   scripts/bench-ab.sh main cache 2 -- -only mesh
#
# REV is exported with git archive into a temporary folder (a tree beside
# this one, with its own go.mod replace of the main module, so the bench
# programs build against that revision's source). Each round runs
# `scripts/bench.sh BENCHMARK FLAGS` there, then here. The outputs, each
# ending with the benchmark's Markdown table, go to bench-ab/ (override:
# OUT); ROUNDS defaults to 2. The environment of scripts/bench.sh applies
# (BENCH_TIMEOUT, NATS_PORT, ...). Run it on an otherwise idle machine.
set -euo pipefail

if [ $# -lt 2 ]; then
	echo "usage: $0 REV BENCHMARK [ROUNDS] [-- FLAGS...]" >&2
	exit 2
fi
cd "$(dirname "$0")/.."
rev=$1 bench=$2
shift 2
rounds=2
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
	rounds=$1
	shift
fi
[ "${1:-}" = "--" ] && shift

out=${OUT:-bench-ab}
mkdir -p "$out"
before=$(mktemp -d)
trap 'rm -rf "$before"' EXIT
git archive "$rev" | tar -x -C "$before"
echo "bench-ab: before is $rev ($(git rev-parse --short "$rev")), after is $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' with uncommitted changes')" >&2

for n in $(seq "$rounds"); do
	for side in before after; do
		dir=$PWD
		[ "$side" = before ] && dir=$before
		echo "bench-ab: round $n, $side" >&2
		"$dir/scripts/bench.sh" "$bench" "$@" >"$out/$bench-$side-$n.txt"
	done
done
echo "bench-ab: tables in $out/$bench-{before,after}-{1..$rounds}.txt" >&2
