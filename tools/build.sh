#!/usr/bin/env bash
# Build the Lambda artefact with `sam build` (dependencies from src/requirements.txt) into .aws-sam/.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"

if [ ! -x .venv-sam/bin/sam ] || ! cmp -s requirements/sam.txt .venv-sam/.installed-from; then
    echo ">> creating .venv-sam (from requirements/sam.txt)"
    rm -rf .venv-sam
    "$PYTHON" -m venv .venv-sam
    .venv-sam/bin/python -m pip install --quiet --upgrade pip
    .venv-sam/bin/python -m pip install --quiet --require-hashes -r requirements/sam.txt
    cp requirements/sam.txt .venv-sam/.installed-from
fi

# sam build looks for the function's runtime (pythonX.Y) on PATH: put the one template.yaml names first.
runtime="$(sed -n 's/^ *Runtime: python\(3\.[0-9]*\).*/\1/p' template.yaml | head -n 1)"
interpreter="$(bash tools/find-python.sh "$runtime")"
shims="$(mktemp -d)"
trap 'rm -rf "$shims"' EXIT
ln -s "$interpreter" "$shims/python$runtime"
export PATH="$shims:$PATH"

export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export SAM_CLI_TELEMETRY=0

.venv-sam/bin/sam build --template-file template.yaml --cached --parallel "$@"
