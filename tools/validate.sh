#!/usr/bin/env bash
# Validate template.yaml with the SAM CLI (schema + cfn-lint) and checkov (security policy).
# Each tool lives in its own virtual environment so neither disturbs the application's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
TEMPLATE="${TEMPLATE:-template.yaml}"

# ensure_venv DIR LOCKFILE EXECUTABLE: DIR holds exactly LOCKFILE's versions (hashes checked); rebuilt when
# the lock changes.
ensure_venv() {
    local dir="$1" lockfile="$2" executable="$3"
    if [ ! -x "$dir/bin/$executable" ] || ! cmp -s "$lockfile" "$dir/.installed-from"; then
        echo ">> creating $dir (from $lockfile)"
        rm -rf "$dir"
        "$PYTHON" -m venv "$dir"
        "$dir/bin/python" -m pip install --quiet --upgrade pip
        "$dir/bin/python" -m pip install --quiet --require-hashes -r "$lockfile"
        cp "$lockfile" "$dir/.installed-from"
    fi
}

ensure_venv .venv-sam requirements/sam.txt sam
ensure_venv .venv-checkov requirements/checkov.txt checkov

# sam validate needs a region; it makes no AWS call with --lint, but botocore wants credentials present.
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
export AWS_REGION="${AWS_REGION:-$AWS_DEFAULT_REGION}"
if [ -z "${AWS_ACCESS_KEY_ID:-}" ] && [ -z "${AWS_PROFILE:-}" ]; then
    export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
fi
export SAM_CLI_TELEMETRY=0

echo ">> sam validate --lint"
.venv-sam/bin/sam validate --lint --template "$TEMPLATE" --region "$AWS_DEFAULT_REGION"

echo ">> checkov"
# checkov exits non-zero when any check fails; skipped checks are declared (with a reason) in the template.
.venv-checkov/bin/checkov -f "$TEMPLATE" --framework cloudformation --quiet --compact --skip-download

echo ">> template valid"
