#!/usr/bin/env bash
# Wire compatibility of proto/ with buf's FILE breaking rules:
#
#  1. against main: on a branch, its tip; on main itself, the commit before
#     HEAD, so that a change landing on main is checked against what main
#     served before it (`BUF_AGAINST` overrides, e.g. '.git#tag=v1.0.0');
#  2. a self-test that the check bites: a copy of proto/ with a field of
#     shop.user.v1.User renumbered and another deleted must fail it, naming
#     both (buf, which compares by number, reports the renumbered one as
#     field 2 deleted), or this script fails.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
log() { echo "check-proto-compat.sh: $*" >&2; }

if [[ -n "${BUF_AGAINST:-}" ]]; then
    against="$BUF_AGAINST"
elif [[ "$(git rev-parse --abbrev-ref HEAD)" != main ]] && git rev-parse --verify -q main >/dev/null; then
    against=".git#branch=main"
elif git rev-parse --verify -q HEAD~1 >/dev/null; then
    against=".git#ref=HEAD~1"
else
    against=""
fi
if [[ -n "$against" ]]; then
    log "proto/ against $against"
    scripts/buf.sh breaking --against "$against"
else
    log "no earlier commit to compare with (a shallow clone?); skipping the comparison"
fi

log "self-test: a deliberately breaking change must fail"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp -r buf.yaml proto "$work/"
user="$work/proto/shop/user/v1/user.proto"
# Renumber User.email (2 -> 20) and delete User.username.
python3 - "$user" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
block = re.search(r"^message User \{.*?^\}", text, re.M | re.S)
body = block[0]
changed = body.replace("string email = 2;", "string email = 20;", 1)
changed = re.sub(r"\n\s*string username = 3;", "\n", changed, count=1)
assert changed != body and changed.count("= 20;") == 1 and "username = 3" not in changed, "edit failed"
open(path, "w").write(text.replace(body, changed))
PY
if out="$(scripts/buf.sh breaking "$work" --against . 2>&1)"; then
    log "FAILED: buf breaking accepted a renumbered and a deleted field"
    exit 1
fi
for expected in 'field "2" with name "email" on message "User" was deleted' 'field "3" with name "username" on message "User" was deleted'; do
    if ! grep -qF "$expected" <<<"$out"; then
        log "FAILED: buf breaking did not report: $expected"
        echo "$out" >&2
        exit 1
    fi
done
log "ok: the breaking copy was refused ($(grep -c . <<<"$out") findings)"
