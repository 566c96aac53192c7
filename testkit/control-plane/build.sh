#!/usr/bin/env bash
# Builds the real Kubernetes control plane that Spot Guard's tests run on loopback: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, kwok, and kubectl and helm as
# referees. Each comes from `go build` of a Go module of ours in this folder (go.mod and
# go.sum only); docs/control-plane.md says what is built and why.
#
# The binaries go to a cache outside the work tree, keyed by a hash of this script, the module
# files and the Go version:
#   ${SPOTGUARD_CACHE_DIR:-$HOME/.cache/spotguard}/control-plane/<key>/bin/
# and <workspace>/target/control-plane/bin is made a link to that folder, where the tests look.
# When the key's folder is there already nothing is built (about a second). Builds go to a
# temporary folder that is renamed into place when every component is built; a lock makes a
# second concurrent run wait for the first and then reuse its result.
#
# Usage: testkit/control-plane/build.sh [--force]   (--force rebuilds even when cached)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
workspace="$(cd "$here/../.." && pwd)"
force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

# The module folders (each builds the packages of its go.mod's tool lines) and the module
# whose release each one builds.
components=(kubernetes etcd kwok helm)
declare -A main_module=(
  [kubernetes]=k8s.io/kubernetes
  [etcd]=go.etcd.io/etcd/server/v3
  [kwok]=sigs.k8s.io/kwok
  [helm]=helm.sh/helm/v3
)

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: the go command is required (Go >= 1.26)" >&2
  exit 1
fi

# A sane, explicit Go environment: our go.sum files are complete, so builds never edit them;
# no go.work above us takes part; static binaries need no C toolchain.
export GOWORK=off
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0

go_version="$(go env GOVERSION GOOS GOARCH | tr '\n' ' ')"
key="$(
  {
    echo "$go_version"
    cd "$here"
    for f in build.sh */go.mod */go.sum; do
      echo "== $f"
      cat "$f"
    done
  } | sha256sum | cut -c1-16
)"

cache_root="${SPOTGUARD_CACHE_DIR:-$HOME/.cache/spotguard}/control-plane"
dest="$cache_root/$key"
link="$workspace/target/control-plane/bin"

link_bin() {
  mkdir -p "$(dirname "$link")"
  local tmp_link="$link.tmp.$$"
  ln -sfn "$dest/bin" "$tmp_link"
  mv -Tf "$tmp_link" "$link"
  echo "build.sh: $link -> $dest/bin"
}

complete() { [ -f "$dest/complete" ]; }

# Control planes of other keys (older module files) unused for 14 days go; a run marks its own
# as used.
prune() {
  touch "$dest/last-used"
  find "$cache_root" -mindepth 2 -maxdepth 2 -name last-used -mtime +14 -printf '%h\n' |
    while read -r old; do
      echo "build.sh: removing $old, unused for 14 days"
      rm -rf "$old"
    done
}

if [ "$force" = 0 ] && complete; then
  echo "build.sh: control plane $key is cached, nothing to build"
  link_bin
  prune
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
if ! flock -n 9; then
  echo "build.sh: another build holds $cache_root/.lock, waiting for it"
  flock 9
fi
if [ "$force" = 0 ] && complete; then
  echo "build.sh: control plane $key was built meanwhile, nothing to build"
  link_bin
  prune
  exit 0
fi

work="$(mktemp -d "$cache_root/.build.$key.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"

# Version of a module as its component's go.mod resolves it.
module_version() { (cd "$here/$1" && go list -m -f '{{.Version}}' "$2"); }

ldflags_for() {
  case "$1" in
    kubernetes)
      local v major minor x
      v="$(module_version kubernetes k8s.io/kubernetes)"
      major="${v#v}"; major="${major%%.*}"
      minor="${v#v*.}"; minor="${minor%%.*}"
      x=""
      # kube-* print component-base's version; kubectl's client version is client-go's.
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        x+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
        x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
      done
      echo "$x"
      ;;
    helm)
      local v cg cmaj cmin x
      v="$(module_version helm helm.sh/helm/v3)"
      # Helm's default Kubernetes capabilities follow the client-go it is built with
      # (v0.N.x is Kubernetes 1.N), as its own Makefile sets them.
      cg="$(module_version helm k8s.io/client-go)"
      cmaj="${cg#v}"; cmaj=$(( ${cmaj%%.*} + 1 ))
      cmin="${cg#v*.}"; cmin="${cmin%%.*}"
      x=" -X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.metadata="
      x+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
        x+=" -X $pkg.k8sVersionMajor=$cmaj -X $pkg.k8sVersionMinor=$cmin"
      done
      echo "$x"
      ;;
    *) echo "" ;;
  esac
}

total_start=$SECONDS
echo "build.sh: building control plane $key into $dest (Go: $go_version)"
for c in "${components[@]}"; do
  start=$SECONDS
  mapfile -t tools < <(cd "$here/$c" && go mod edit -json | sed -n '/"Tool": \[/,/\]/s/.*"Path": "\(.*\)".*/\1/p')
  if [ ${#tools[@]} -eq 0 ]; then
    echo "build.sh: $c/go.mod names no tool to build" >&2
    exit 1
  fi
  names=()
  for t in "${tools[@]}"; do names+=("${t##*/}"); done
  [ "$c" = etcd ] && names=(etcd)
  echo "build.sh: [$c] ${names[*]} ..."
  (
    cd "$here/$c"
    go build -trimpath -ldflags "-s -w$(ldflags_for "$c")" -o "$work/bin/" "${tools[@]}"
  )
  # etcd's main package is its module's root, go.etcd.io/etcd/server/v3: go build names it
  # "server".
  if [ "$c" = etcd ]; then
    mv "$work/bin/server" "$work/bin/etcd"
  fi
  echo "build.sh: [$c] built in $((SECONDS - start)) s"
done

(
  echo "key: $key"
  echo "go: $go_version"
  for c in "${components[@]}"; do
    echo "$c: $(cd "$here/$c" && go list -m -f '{{.Path}} {{.Version}}' "${main_module[$c]}")"
  done
) >"$work/versions.txt"
touch "$work/complete"

if [ -e "$dest" ]; then
  # --force, or an incomplete folder left by a build that was killed halfway through.
  rm -rf "$dest.old.$$"
  mv -T "$dest" "$dest.old.$$"
  rm -rf "$dest.old.$$"
fi
mv -T "$work" "$dest"
trap - EXIT
echo "build.sh: control plane built in $((SECONDS - total_start)) s"
link_bin
prune
