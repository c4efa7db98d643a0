#!/usr/bin/env bash
# Build the Lambda artefact with `sam build` (dependencies from src/requirements.txt) into .aws-sam/.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"

if [ ! -x .venv-sam/bin/sam ]; then
    echo ">> creating .venv-sam (aws-sam-cli)"
    "$PYTHON" -m venv .venv-sam
    .venv-sam/bin/python -m pip install --quiet --upgrade pip
    .venv-sam/bin/python -m pip install --quiet aws-sam-cli
fi

# sam build looks for the function's runtime (python3.12/python3.13) on PATH. With pyenv, expose every
# installed interpreter the template may ask for, unless the caller already chose.
if command -v pyenv >/dev/null 2>&1 && [ -z "${PYENV_VERSION:-}" ]; then
    export PYENV_VERSION=3.11.7:3.12.1:3.13.0
fi

export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export SAM_CLI_TELEMETRY=0

.venv-sam/bin/sam build --template-file template.yaml --cached --parallel "$@"
