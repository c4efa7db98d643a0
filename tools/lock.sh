#!/usr/bin/env bash
# Refresh the one lock (uv.lock) and the two pinned, hashed requirement files exported from it:
#   requirements/dev.txt   what `make install` / `make test` install (the function's and the tools' versions)
#   src/requirements.txt   what `sam build` ships in the Lambda artefact (the function's versions only)
# Both come from the same resolution, so the function runs exactly the versions the tests ran.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv-uv/bin/uv ]; then
    "$PYTHON" -m venv .venv-uv
    .venv-uv/bin/python -m pip install --quiet "uv==${UV_VERSION}"
fi
UV=.venv-uv/bin/uv

"$UV" lock ${UPGRADE:+--upgrade} --quiet
bash tools/export-requirements.sh "$UV"

# The template tools pin boto3 versions that conflict with the application's and with each other, so each
# has a venv of its own, installed from its own hashed lock.
SAM_CLI_VERSION=1.170.0
CHECKOV_VERSION=3.3.30
for tool in "aws-sam-cli==${SAM_CLI_VERSION}:sam" "checkov==${CHECKOV_VERSION}:checkov"; do
    echo "${tool%%:*}" | "$UV" pip compile - --quiet --generate-hashes --no-header --python-version 3.11 \
        --output-file "requirements/${tool##*:}.txt"
done
echo "uv.lock, requirements/{dev,sam,checkov}.txt and src/requirements.txt are up to date"
