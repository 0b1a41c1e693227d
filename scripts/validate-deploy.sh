#!/usr/bin/env bash
# Static checks of the deployment files (Dockerfile, compose.yaml, deploy/, k8s/): schemas,
# rendering, and the wiring between them. No Docker engine or cluster needed. scripts/test.sh
# calls it; it runs alone too. The checks themselves are in scripts/validate-deploy.py.
#
# Tools: check-jsonschema (the Compose spec schema), kubernetes-validate (Kubernetes schemas),
# dockerfile (BuildKit's parser), all from PyPI into the venv of scripts/py-tools.sh; promtool
# from Debian's prometheus package, unpacked into a cache (never installed, so no Prometheus
# service starts); kubectl, when present, to render the kustomizations.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$(scripts/py-tools.sh)

# promtool: Debian's package carries it; unpack it once into the cache.
promtool=$(command -v promtool || true)
if [ -z "$promtool" ]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/promtool
  if [ ! -x "$cache/usr/bin/promtool" ]; then
    echo "[deploy] fetching promtool (Debian's prometheus package, unpacked, not installed)" >&2
    tmp=$(mktemp -d)
    if (cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; }); then
      mkdir -p "$cache"
      dpkg-deb -x "$tmp"/prometheus_*.deb "$cache"
    fi
    rm -rf "$tmp"
  fi
  [ -x "$cache/usr/bin/promtool" ] && promtool=$cache/usr/bin/promtool
fi
if [ -z "$promtool" ]; then
  echo "[deploy] promtool could not be fetched (apt-get download prometheus failed)" >&2
  exit 1
fi

exec "$VENV/bin/python" scripts/validate-deploy.py --venv "$VENV" ${promtool:+--promtool "$promtool"}
