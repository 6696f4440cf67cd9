#!/usr/bin/env bash
# Builds the web page (web/) and tests it in headless Chromium against the
# real stack (devstack serves the built page): sign in, place an order, see
# it shipped live, see the message when the stack stops (web/test/).
#
#   scripts/web-test.sh                       # build and test
#   SCREENSHOT=docs/web-page.png scripts/web-test.sh   # and a screenshot
#
# Needs Node.js 20.19 or newer with npm (the npm packages are pinned by
# web/package-lock.json and installed into web/node_modules) and Chromium
# (Debian's chromium, installed when missing and this runs as root with
# apt-get; CHROMIUM names another binary). Without them it says what is
# missing and exits 3, which scripts/test.sh reports as left out (a
# failure when REQUIRE_WEB=1, as in CI).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf '\033[1mweb-test.sh:\033[0m %s\n' "$*" >&2; }

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "Node.js and npm are missing (Node.js 20.19 or newer)"
    exit 3
fi
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a == 20 && b >= 19) ? 0 : 1)'; then
    log "Node.js $(node --version) is too old: the page's build (Vite) needs 20.19 or newer"
    exit 3
fi

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
    if [[ -z "${CHROMIUM:-}" && "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing chromium from Debian packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >&2 \
            || { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -qq --no-install-recommends chromium >&2; }
    else
        log "Chromium is missing ($chromium; Debian: apt-get install chromium, or set CHROMIUM)"
        exit 3
    fi
fi

log "npm ci and npm run build in web/"
npm --prefix web ci --no-audit --no-fund --loglevel=error >&2
npm --prefix web run build >&2

log "cargo build --workspace --all-targets (devstack, shopctl)"
cargo build --locked --workspace --all-targets
bin="$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/debug"

screenshot=()
[[ -z "${SCREENSHOT:-}" ]] || screenshot=(SCREENSHOT="$(realpath -m "$SCREENSHOT")")
log "node --test web/test/ (headless $chromium)"
env SHOP_BIN_DIR="$bin" CHROMIUM="$chromium" "${screenshot[@]}" npm --prefix web test
