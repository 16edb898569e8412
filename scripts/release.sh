#!/usr/bin/env bash
# make release: static, reproducible pgtopo binaries for linux and darwin,
# amd64 and arm64, as tar.gz archives in dist/, with SHA256SUMS and a
# CycloneDX SBOM of the module. Reproducible: the same commit gives the same
# bytes (no paths, no build id, no VCS stamping but the version and
# revision given, archive entries with fixed owners and the commit's time);
# RELEASE_CHECK=1 builds linux/amd64 a second time and compares.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
VERSION=${VERSION:?VERSION, a semantic version tag such as v0.1.0 (make release sets it from git describe)}
REVISION=${REVISION:?REVISION, the commit}
CYCLONEDX=${CYCLONEDX:?CYCLONEDX, the cyclonedx-gomod binary (make release installs it in bin/)}
DIST=${DIST:-dist}
EPOCH=$(git log -1 --format=%ct "$REVISION")
LDFLAGS="-s -w -buildid= -X github.com/pgtopo/pgtopo/cli.version=${VERSION} -X github.com/pgtopo/pgtopo/cli.revision=${REVISION}"

rm -rf "$DIST"
mkdir -p "$DIST"
build() { # os arch out
	CGO_ENABLED=0 GOOS=$1 GOARCH=$2 "$GO" build -trimpath -buildvcs=false -ldflags "$LDFLAGS" -o "$3" .
}
archive() { # dir name
	tar --sort=name --mtime="@${EPOCH}" --owner=0 --group=0 --numeric-owner --mode='u+rwX,go+rX,go-w' \
		-C "$1" -cf - pgtopo LICENSE README.md CHANGELOG.md | gzip -n -9 > "$2"
}
for target in linux/amd64 linux/arm64 darwin/amd64 darwin/arm64; do
	os=${target%/*} arch=${target#*/}
	stage=$(mktemp -d)
	build "$os" "$arch" "$stage/pgtopo"
	cp LICENSE README.md CHANGELOG.md "$stage/"
	archive "$stage" "$DIST/pgtopo_${VERSION#v}_${os}_${arch}.tar.gz"
	rm -rf "$stage"
	echo "release: $DIST/pgtopo_${VERSION#v}_${os}_${arch}.tar.gz"
done
"$CYCLONEDX" mod -licenses=false -json -output "$DIST/pgtopo_${VERSION#v}_sbom.cdx.json" . >/dev/null
(cd "$DIST" && sha256sum -- *.tar.gz *.cdx.json > SHA256SUMS)
echo "release: $DIST/SHA256SUMS"

if [ "${RELEASE_CHECK:-0}" = 1 ]; then
	again=$(mktemp -d)
	cp LICENSE README.md CHANGELOG.md "$again/"
	build linux amd64 "$again/pgtopo"
	archive "$again" "$again/a.tar.gz"
	want=$(grep "_linux_amd64.tar.gz" "$DIST/SHA256SUMS" | cut -d' ' -f1)
	got=$(sha256sum "$again/a.tar.gz" | cut -d' ' -f1)
	rm -rf "$again"
	if [ "$want" != "$got" ]; then
		echo "release: linux/amd64 built twice differs ($want, then $got): not reproducible" >&2
		exit 1
	fi
	echo "release: linux/amd64 built twice: identical ($got)"
fi
(cd "$DIST" && sha256sum --check --quiet SHA256SUMS)
