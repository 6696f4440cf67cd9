#!/usr/bin/env bash
# Creates a development certificate authority and one certificate per
# service, for TLS and mutual TLS on a laptop or in docker-compose.
#
#   scripts/gen-certs.sh [DIR] [NAME...]
#
# DIR defaults to ./certs (git-ignored). NAMEs default to every service of
# deploy/services.tsv, and client. The CA is created once and reused, so running
# the script again issues fresh certificates (rotation) under the same CA;
# delete DIR to start over. Each certificate is valid for its NAME,
# localhost, 127.0.0.1 and ::1, for both server and client use (a service
# is a server to its callers and a client of the services it calls).
#
# Files: ca.pem (trust this), ca-key.pem, NAME.pem (chain: leaf then CA),
# NAME-key.pem. Keys are ECDSA P-256, readable by the owner only; with
# GEN_CERTS_FOR_CONTAINERS=1 the service certificates and keys are made
# readable by everyone (the containers run as another user than the one
# who owns the bind-mounted directory; the CA key stays private).
# Development only: a production CA belongs in a secret manager or
# cert-manager, not on disk next to the code.
set -euo pipefail

dir=${1:-certs}
shift || true
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
    read -r -a names <<<"$(python3 "$(dirname "${BASH_SOURCE[0]}")/gen-deploy.py" --names)"
    names+=(client)
fi
days=${CERT_DAYS:-397}

if ! command -v openssl >/dev/null; then
    echo "gen-certs.sh: openssl is needed (Debian: apt-get install openssl)" >&2
    exit 1
fi

mkdir -p "$dir"
chmod 700 "$dir"
umask 077

if [[ ! -f $dir/ca.pem || ! -f $dir/ca-key.pem ]]; then
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" -days 3650 -sha256 \
        -subj "/CN=shop development CA $(date +%Y%m%d%H%M%S)-$RANDOM" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    echo "gen-certs.sh: new CA in $dir/ca.pem"
fi

for name in "${names[@]}"; do
    if [[ ! $name =~ ^[A-Za-z0-9.-]+$ ]]; then
        echo "gen-certs.sh: $name is not a host name" >&2
        exit 1
    fi
    ext=$(mktemp)
    trap 'rm -f "$ext"' EXIT
    cat >"$ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:$name,DNS:localhost,IP:127.0.0.1,IP:::1
EXT
    # Write next to the old files, then move: a service reloading its
    # certificate never sees a half-written pair for long.
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
        -keyout "$dir/.$name-key.pem" -out "$dir/.$name.csr" -subj "/CN=$name" 2>/dev/null
    openssl x509 -req -in "$dir/.$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
        -set_serial "0x$(openssl rand -hex 16)" -days "$days" -sha256 \
        -extfile "$ext" -out "$dir/.$name.crt" 2>/dev/null
    cat "$dir/.$name.crt" "$dir/ca.pem" >"$dir/.$name.pem"
    mv "$dir/.$name-key.pem" "$dir/$name-key.pem"
    mv "$dir/.$name.pem" "$dir/$name.pem"
    rm -f "$dir/.$name.csr" "$dir/.$name.crt" "$ext"
    echo "gen-certs.sh: $dir/$name.pem and $dir/$name-key.pem"
done

if [[ ${GEN_CERTS_FOR_CONTAINERS:-0} == 1 ]]; then
    chmod 755 "$dir"
    chmod 644 "$dir/ca.pem"
    for name in "${names[@]}"; do
        chmod 644 "$dir/$name.pem" "$dir/$name-key.pem"
    done
fi
