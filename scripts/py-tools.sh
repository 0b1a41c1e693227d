#!/usr/bin/env bash
# Makes sure the Python tools the tests use are installed, in a venv of their own, and prints its
# path: schemathesis (property-based API tests), standardwebhooks (the reference verifier of
# Standard Webhooks signatures), and for scripts/validate-deploy.sh check-jsonschema (the Compose
# spec schema), kubernetes-validate (Kubernetes schemas) and dockerfile (BuildKit's Dockerfile
# parser). All from PyPI, pinned.
set -euo pipefail
SCHEMATHESIS_VERSION=4.32.5
STANDARDWEBHOOKS_VERSION=1.1.0
CHECK_JSONSCHEMA_VERSION=0.39.0
KUBERNETES_VALIDATE_VERSION=1.37.0
DOCKERFILE_VERSION=3.4.0
VENV=${SWITCHYARD_PY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[py] creating $VENV" >&2
  python3 -m venv "$VENV" 2>/dev/null || {
    # Debian's python3 ships venv separately.
    apt-get install -y python3-venv >/dev/null && python3 -m venv "$VENV"
  }
fi
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION" \
  || ! "$VENV/bin/python" -c "import standardwebhooks" 2>/dev/null \
  || ! "$VENV/bin/check-jsonschema" --version 2>/dev/null | grep -q "$CHECK_JSONSCHEMA_VERSION" \
  || ! "$VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION" \
  || ! "$VENV/bin/python" -c "import dockerfile" 2>/dev/null; then
  echo "[py] installing schemathesis $SCHEMATHESIS_VERSION, standardwebhooks $STANDARDWEBHOOKS_VERSION," \
    "check-jsonschema $CHECK_JSONSCHEMA_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION" \
    "and dockerfile $DOCKERFILE_VERSION" >&2
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "schemathesis==$SCHEMATHESIS_VERSION" "standardwebhooks==$STANDARDWEBHOOKS_VERSION" \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "dockerfile==$DOCKERFILE_VERSION" >&2
fi
echo "$VENV"
