#!/usr/bin/env bash
# Build what benchmarks/gpu_session.sh needs on the offline GPU host: wheels of this workspace and of the
# packages that host lacks (.whl), and the FlashInfer bundle (.fi). Both folders stay out of git.
# AB_BASE=<git revision>: also wheels of core and the cuda plugin at that revision (.whl-base), for gpu_session.sh's
# step-ab stage (the plugin too, as its contract version follows core's).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .whl/.deps ] || { bash ../shared/tools/gpu-wheelhouse.sh .whl hypothesis sortedcontainers attrs && touch .whl/.deps; }
[ -f .fi/flashinfer-slim.tgz ] || bash ../shared/tools/flashinfer-bundle.sh .fi
rm -f .whl/unifer*.whl
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl ./core ./plugins/cpu ./plugins/cuda ./conformance
rm -rf .whl-base
if [ -n "${AB_BASE:-}" ]; then
  base=$(mktemp -d)
  git worktree add -q --detach "$base" "$AB_BASE"
  .venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w .whl-base "$base/core" "$base/plugins/cuda"
  git worktree remove --force "$base"
  echo "core and cuda plugin at $(git rev-parse --short "$AB_BASE") in .whl-base"
fi
du -sh .whl .fi
