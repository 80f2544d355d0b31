#!/usr/bin/env bash
# The README's demo command: set up (shared with the tests), then run the segmenter node over
# real DDS on generated camera frames. Extra arguments go to the demo, e.g.
#   bash scripts/demo.sh --model facebook/sam3 --device cuda --prompts mug bottle
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/env.sh"
cd "$repo"
python -m sam3_ros.tools.demo "$@"
