#!/usr/bin/env bash
# Fails when git tracks a build output: an executable binary (ELF, Mach-O,
# PE) or any file over 1 MiB. Build outputs go to bin/, which is ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
while IFS= read -r -d '' f; do
	[ -f "$f" ] || continue
	size=$(stat -c %s "$f")
	if [ "$size" -gt 1048576 ]; then
		echo "check-tree: $f is $size bytes, over 1 MiB: keep build outputs and large data out of git"
		bad=1
	fi
	magic=$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')
	case "$magic" in
	7f454c46 | feedface | feedfacf | cefaedfe | cffaedfe | cafebabe | 4d5a9000)
		echo "check-tree: $f is an executable binary: build outputs go to bin/ (ignored), never into git"
		bad=1
		;;
	esac
done < <(git ls-files -z)
exit "$bad"
