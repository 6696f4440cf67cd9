#!/usr/bin/env bash
# Runs buf (the protobuf linter and breaking-change checker) on proto/.
#
# buf comes from the npm package @bufbuild/buf, installed on first use into
# .tools/buf (ignored by git), never globally. Arguments go to buf as they
# are; with none it runs `buf lint`.
#
#   scripts/buf.sh                  # lint
#   scripts/buf.sh breaking --against '.git#branch=main'
set -euo pipefail

BUF_VERSION="${BUF_VERSION:-1.75.0}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools/buf"
bin="$tools/node_modules/.bin/buf"

if [[ ! -x "$bin" ]] || [[ "$("$bin" --version 2>/dev/null)" != "$BUF_VERSION" ]]; then
    command -v npm >/dev/null || { echo "buf.sh: npm is needed to install @bufbuild/buf" >&2; exit 1; }
    echo "buf.sh: installing @bufbuild/buf@$BUF_VERSION into .tools/buf" >&2
    mkdir -p "$tools"
    npm install --prefix "$tools" --no-save --no-audit --no-fund --loglevel=error \
        "@bufbuild/buf@$BUF_VERSION" >&2
fi

cd "$root"
if [[ $# -eq 0 ]]; then set -- lint; fi
exec "$bin" "$@"
