#!/bin/sh
# Portcullis init step, run as the proxy's UID just before the proxy starts.
#
# 1. Copies the key files out of the Secret volumes into the proxy's state directory with
#    mode 0600. Portcullis refuses a key file that group or others can read, and a Secret
#    volume cannot hand a file to one UID with mode 0600 (fsGroup adds group read). The
#    vault also needs a writable directory: the proxy keeps a generation file beside it.
# 2. With REPLICA_ID set (the pod name, from the downward API), writes a copy of the config
#    whose `replica_id` line carries it, so each replica of a central Deployment signs its
#    own ledger chain. The config file has no environment substitution, hence this step.
set -eu

SECRETS="${SECRETS_DIR:-/etc/portcullis-secrets}"
STATE="${STATE_DIR:-/var/lib/portcullis}"
CONFIG_IN="${CONFIG_IN:-/etc/portcullis/portcullis.toml}"
CONFIG_OUT="${CONFIG_OUT:-/run/portcullis/portcullis.toml}"

fail() { echo "prepare.sh: $*" >&2; exit 1; }

install -d -m 0700 "$STATE/ca" "$STATE/ledger"

# The CA every agent trusts: required, or the proxy would mint a CA of its own nobody trusts.
[ -f "$SECRETS/ca/ca.pem" ] && [ -f "$SECRETS/ca/ca.key" ] ||
  fail "the CA Secret must hold ca.pem and ca.key (mounted at $SECRETS/ca)"
install -m 0644 "$SECRETS/ca/ca.pem" "$STATE/ca/ca.pem"
install -m 0600 "$SECRETS/ca/ca.key" "$STATE/ca/ca.key"
# One checkpoint signing key for every replica, so one public key verifies all chains.
# Without it each pod creates its own.
if [ -f "$SECRETS/ca/ledger-signing.key" ]; then
  install -m 0600 "$SECRETS/ca/ledger-signing.key" "$STATE/ca/ledger-signing.key"
fi
# Provider keys (encrypted; the master key reaches the proxy as PORTCULLIS_MASTER_KEY).
if [ -f "$SECRETS/vault/vault.json" ]; then
  install -m 0600 "$SECRETS/vault/vault.json" "$STATE/vault.json"
fi

if [ -n "${REPLICA_ID:-}" ]; then
  case "$REPLICA_ID" in
    *[!A-Za-z0-9._-]*) fail "REPLICA_ID '$REPLICA_ID' has characters a replica id cannot hold" ;;
  esac
  grep -q '^replica_id = ' "$CONFIG_IN" ||
    fail "$CONFIG_IN has no 'replica_id = ...' line under [ledger] to fill in"
  install -d -m 0755 "$(dirname "$CONFIG_OUT")"
  sed "s/^replica_id = .*/replica_id = \"$REPLICA_ID\"/" "$CONFIG_IN" >"$CONFIG_OUT.tmp"
  mv "$CONFIG_OUT.tmp" "$CONFIG_OUT"
  # Refuse to start on a config the proxy would refuse, with every error in the log
  # (the portcullis-init image carries the binary).
  portcullis check "$CONFIG_OUT"
fi
echo "prepare.sh: state in $STATE ready"
