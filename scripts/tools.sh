#!/usr/bin/env bash
# The Go tools the tests use, built from source at pinned versions through the Go module proxy
# (no release download is reachable here): prometheus and promtool (alert rules, dashboards),
# helm (the chart in deploy/helm) and actionlint (CI workflows). The binaries go to
# .services/bin (SERVICES_DIR/bin), each with a stamp of what it was built from: a second run
# does nothing, a changed pin rebuilds.
#
#   scripts/tools.sh build [NAME...]   build the named tools (default: all) that are missing or stale
#   scripts/tools.sh check NAME        exit 0 when NAME is built from the current pin, else 1
#   scripts/tools.sh version NAME      print the pinned version NAME reports (`NAME --version`)
#   scripts/tools.sh path NAME         print where NAME's binary is
#
# NAME is one of prometheus, promtool, helm, actionlint. Needs Go (GO, else `go` on PATH, else
# /usr/local/go/bin/go). Builds run under `nice`; cold, they take minutes (prometheus longest):
# run this before the tests (`make tools`, a prerequisite of `make test`), never inside one.
set -euo pipefail

# The pins, all of them. Prometheus publishes release X.Y.Z as Go module version v0.X0Y.Z
# (3.16.0 is v0.316.0).
PROMETHEUS_VERSION=3.16.0
HELM_VERSION=v4.3.2
ACTIONLINT_VERSION=v1.7.12

root=$(cd "$(dirname "$0")/.." && pwd)
home="${SERVICES_DIR:-$root/.services}"
bin="$home/bin"

die() { echo "tools: $*" >&2; exit 1; }

prometheus_module_version() {
  local major minor patch
  IFS=. read -r major minor patch <<<"$PROMETHEUS_VERSION"
  printf 'v0.%d%02d.%d' "$major" "$minor" "$patch"
}

# spec GROUP -> "module version packages... | tags | ldflags": what a build of GROUP is made of.
# Its text is the stamp, so a change to any part of it rebuilds.
#  - prometheus and promtool build together (one module, shared packages). `remove_all_sd` leaves
#    out the cloud service discoveries and their SDKs (static and file discovery stay): the
#    tests scrape loopback targets. Without the `builtinassets` tag the web UI is not
#    embedded (the module has no built assets); the HTTP API, which the tests use, is all there.
#  - the -X flags put the release's version where --version reads it, as the projects' own
#    release builds do (actionlint reads it from the module's build information).
spec() {
  case "$1" in
    prometheus)
      local v; v=$(prometheus_module_version)
      echo "github.com/prometheus/prometheus $v cmd/prometheus cmd/promtool" \
        "| remove_all_sd | -X github.com/prometheus/common/version.Version=$PROMETHEUS_VERSION" ;;
    helm)
      echo "helm.sh/helm/v4 $HELM_VERSION cmd/helm" \
        "| | -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" ;;
    actionlint)
      echo "github.com/rhysd/actionlint $ACTIONLINT_VERSION cmd/actionlint | |" ;;
    *) die "unknown tool group '$1'" ;;
  esac
}

group_of() {  # the build group that makes binary NAME
  case "$1" in
    prometheus|promtool) echo prometheus ;;
    helm|actionlint) echo "$1" ;;
    *) echo "tools: unknown tool '$1' (prometheus, promtool, helm, actionlint)" >&2; exit 2 ;;
  esac
}

binaries_of() {
  case "$1" in prometheus) echo "prometheus promtool" ;; *) echo "$1" ;; esac
}

go_command() {
  if [[ -n "${GO:-}" ]]; then echo "$GO"; return; fi
  command -v go 2>/dev/null && return
  [[ -x /usr/local/go/bin/go ]] && { echo /usr/local/go/bin/go; return; }
  die "'go' not found: install Go 1.26 or newer (or set GO) and run again"
}

current() {  # current GROUP -> 0 when every binary of GROUP exists and was built from its spec
  local stamp="$bin/.$1.stamp" name
  [[ -f "$stamp" && "$(cat "$stamp")" == "$(spec "$1")" ]] || return 1
  for name in $(binaries_of "$1"); do [[ -x "$bin/$name" ]] || return 1; done
}

# `go install module/pkg@version` builds with the module's own go.mod and go.sum (checked
# against the checksum database): the exact dependency versions its release was tested with.
# It refuses a module whose go.mod has replace or exclude directives; none of the pinned ones has.
build() {
  local group=$1 go
  current "$group" && return
  go=$(go_command)
  local line module version packages tags ldflags
  line=$(spec "$group")
  read -r module version packages <<<"${line%%|*}"
  tags=$(echo "$line" | cut -d'|' -f2 | xargs)
  ldflags=$(echo "$line" | cut -d'|' -f3- | xargs)
  local targets=() p
  for p in $packages; do targets+=("$module/$p@$version"); done
  local out="$home/tools-build.$group" log="$home/tools-build.$group.log" started=$SECONDS
  rm -rf "$out"; mkdir -p "$out" "$bin"
  echo "tools: building $group ($module $version) from the Go module proxy, takes minutes the first time"
  CGO_ENABLED=0 GOBIN="$out" GOFLAGS="${GOFLAGS:-} -trimpath" nice -n 10 \
    "$go" install ${tags:+-tags "$tags"} -ldflags "-s -w $ldflags" "${targets[@]}" >"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; die "could not build $group (log: $log)"; }
  for p in $(binaries_of "$group"); do mv -f "$out/$p" "$bin/$p"; done
  rm -rf "$out"
  echo "$line" >"$bin/.$group.stamp"
  echo "tools: built $(binaries_of "$group") in $((SECONDS - started)) s"
}

version_of() {
  case "$1" in
    prometheus|promtool) echo "$PROMETHEUS_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    actionlint) echo "$ACTIONLINT_VERSION" ;;
    *) group_of "$1" >/dev/null ;;
  esac
}

case "${1:-}" in
  build)
    shift
    names=("$@"); [[ ${#names[@]} -gt 0 ]] || names=(prometheus helm actionlint)
    groups=()
    for n in "${names[@]}"; do groups+=("$(group_of "$n")"); done
    mkdir -p "$home"
    # One build at a time: a second caller waits, then finds the tools current.
    exec 9>"$home/tools.lock"
    flock 9
    for g in $(printf '%s\n' "${groups[@]}" | sort -u); do build "$g"; done
    ;;
  check)
    [[ $# -eq 2 ]] || { echo "usage: $0 check NAME" >&2; exit 2; }
    group=$(group_of "$2")
    current "$group" || { echo "tools: $2 is missing or stale: run make tools" >&2; exit 1; } ;;
  version)
    [[ $# -eq 2 ]] || { echo "usage: $0 version NAME" >&2; exit 2; }
    version_of "$2" ;;
  path)
    [[ $# -eq 2 ]] || { echo "usage: $0 path NAME" >&2; exit 2; }
    group_of "$2" >/dev/null
    echo "$bin/$2" ;;
  *)
    echo "usage: $0 build [NAME...] | check NAME | version NAME | path NAME" >&2; exit 2 ;;
esac
