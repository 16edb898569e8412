#!/usr/bin/env bash
# Mutation testing of the planner, the executor, the drills and the
# automatic failover's quorum and agents: gremlins mutates each
# package's code one change at a time and runs its tests. The score is
# killed / all mutants: a mutant no test covers counts as surviving (gremlins'
# own "efficacy" leaves those out), one whose tests time out counts as killed,
# one that does not compile is no mutant. Surviving mutants that cannot be
# killed because they change nothing observable are listed, with why, in
# scripts/mutate-equivalent.txt; the score is printed with and without them.
set -euo pipefail
cd "$(dirname "$0")/.."
gremlins=${GREMLINS:-bin/gremlins}
status=0
# Goals by package; arguments pick packages (default: all).
declare -A goals=([planner]=85 [plan]=80 [apply]=70 [drill]=70 [quorum]=80 [reconcile]=60)
pkgs=("$@")
[ ${#pkgs[@]} -gt 0 ] || pkgs=(planner plan apply drill quorum reconcile)
for pkg in "${pkgs[@]}"; do
  goal=${goals[$pkg]:?no goal for package $pkg}
  out=$(mktemp)
  "$gremlins" unleash --workers 2 --timeout-coefficient 3 --tags mutation "./$pkg" >"$out" 2>&1 || true
  killed=$(grep -cE '^ *(KILLED|TIMED OUT) ' "$out" || true)
  lived=$(grep -cE '^ *LIVED ' "$out" || true)
  uncovered=$(grep -cE '^ *NOT COVERED ' "$out" || true)
  all=$((killed + lived + uncovered))
  if [ "$all" -eq 0 ]; then
    echo "mutate $pkg/: gremlins found no mutants:"; cat "$out"; exit 1
  fi
  equivalent=$(grep -cE "^$pkg/" scripts/mutate-equivalent.txt || true)
  score=$(awk -v k="$killed" -v a="$all" 'BEGIN { printf "%.1f", 100 * k / a }')
  net=$(awk -v k="$killed" -v a="$all" -v e="$equivalent" 'BEGIN { printf "%.1f", 100 * k / (a - e) }')
  verdict=met
  awk -v s="$score" -v g="$goal" 'BEGIN { exit !(s >= g) }' || { verdict="NOT met"; status=1; }
  echo "mutate $pkg/: killed $killed / all $all mutants = $score% (goal $goal%: $verdict); $lived lived, $uncovered not covered; $equivalent listed as equivalent ($net% of the rest)"
  grep -E '^ *(LIVED|NOT COVERED) ' "$out" | sed "s#^ *#  $pkg/ #" || true
  rm -f "$out"
done
exit $status
