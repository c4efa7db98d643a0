#!/usr/bin/env bash
# Print the path of a working Python interpreter of version $1 (e.g. 3.13), or fail with a clear message.
# Looks on PATH first, then in pyenv's versions (any patch release), then asks uv for one it knows.
set -euo pipefail
want="$1"

works() { "$1" -c "import sys; sys.exit(0 if '%d.%d' % sys.version_info[:2] == '$want' else 1)" 2>/dev/null; }

if command -v "python$want" >/dev/null 2>&1 && works "python$want"; then
    command -v "python$want"
    exit 0
fi
if command -v pyenv >/dev/null 2>&1; then
    for candidate in "$(pyenv root)"/versions/"$want".*/bin/python"$want"; do
        if [ -x "$candidate" ] && works "$candidate"; then
            echo "$candidate"
            exit 0
        fi
    done
fi
if command -v uv >/dev/null 2>&1 && found="$(uv python find --no-python-downloads "$want" 2>/dev/null)" && works "$found"; then
    echo "$found"
    exit 0
fi
echo "no Python $want found (looked on PATH, in pyenv's versions and with uv python find)" >&2
exit 1
