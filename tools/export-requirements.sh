#!/usr/bin/env bash
# Export the requirement files from uv.lock (never resolving anew). Usage: export-requirements.sh UV [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
UV="$1"
OUT="${2:-.}"
mkdir -p "$OUT/requirements" "$OUT/src"
common=(--frozen --no-emit-project --no-header --format requirements-txt)
"$UV" export "${common[@]}" --extra dev --output-file "$OUT/requirements/dev.txt" --quiet
"$UV" export "${common[@]}" --no-dev --output-file "$OUT/src/requirements.txt" --quiet
