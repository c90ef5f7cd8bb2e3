#!/usr/bin/env bash
# run.sh [STRATA_BIN] — builds and runs containerd's snapshotter test suite
# (Debian's golang-github-containerd-containerd-dev, Go in GOPATH mode)
# against `strata serve`. Ends with `containerd-suite: N passed, N failed, N skipped`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export STRATA_BIN=$(realpath "${1:-${STRATA_BIN:?pass the strata binary}}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pkg=$work/gopath/src/strata.test/suite
mkdir -p "$pkg"
cp "$here/strata_suite_test.go" "$pkg/"
export GO111MODULE=off GOPATH=$work/gopath:/usr/share/gocode
export GOCACHE=${GOCACHE:-/var/cache/strata-test/gocache}
cd "$pkg"
status=0
go test -v -count=1 -timeout 20m . -test.root 2>&1 | tee "$work/out" || status=$?
awk '/^ *--- PASS: TestStrata\// { p++ } /^ *--- FAIL: TestStrata\// { f++ } /^ *--- SKIP: TestStrata\// { s++ }
     END { printf "containerd-suite: %d passed, %d failed, %d skipped\n", p, f, s }' "$work/out"
exit $status
