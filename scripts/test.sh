#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint, run every test tier.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/env.sh"
cd "$repo"
echo "== ruff"
ruff check sam3_ros test launch
echo "== pytest"
python -m pytest -ra "$@"
