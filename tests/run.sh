#!/usr/bin/env bash
# The one test command (README "Test it"). On a fresh Debian machine it
# installs what the tests need, then runs every check and every test:
#   - Debian packages: curl (a real client) and python3-venv, plus iptables, iproute2
#     and systemd for the deploy/ checks (netns rules, systemd-analyze), if missing;
#   - a Python venv at ./.venv with the pinned openai / anthropic SDKs, and the Helm Go
#     SDK (helm-python-sdk: renders the chart, no helm binary) and the Kubernetes API
#     schemas (kubernetes-validate) for deploy/;
#   - the load generator's peers: squid-openssl (Squid with ssl-bump) from Debian, and
#     mitmproxy in its own venv at ./.venv-peers, pinned by benches/peers-requirements.txt
#     (its dependency pins would fight the SDK venv's);
#   - cargo fmt --check, cargo clippy -D warnings, cargo deny (licences, bans,
#     sources; installed pinned if missing), then cargo test for the
#     whole workspace (the e2e suite finds the venv through PORTCULLIS_TEST_PYTHON).
#   - for the transparent-mode and shared-state tests: setpriv and redis-server
#     (the transparent tests create network namespaces, so they run as root,
#     as CI does).
# Nothing is skipped when a tool is missing: setup fails loudly instead.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

# Versions the SDK tests are pinned to.
OPENAI_VERSION=3.54.0
ANTHROPIC_VERSION=2.12.0
HTTPX_VERSION=0.28.1
PROMETHEUS_CLIENT_VERSION=0.26.0  # its text parser checks /metrics
HELM_SDK_VERSION=0.2.2            # Helm v4's Go SDK: renders and lints deploy/helm
KUBERNETES_VALIDATE_VERSION=1.37.0  # Kubernetes API schemas for deploy/ manifests

need_pkgs=()
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
# The transparent-mode tests: network namespaces, veth, iptables REDIRECT, setpriv.
have ip || need_pkgs+=(iproute2)
{ have iptables && have ip6tables; } || need_pkgs+=(iptables)
have setpriv || need_pkgs+=(util-linux)
# The shared-state tests start their own redis-server on loopback.
have redis-server || need_pkgs+=(redis-server)
have systemd-analyze || need_pkgs+=(systemd)  # deploy/: systemd-analyze verify
# The load generator's Squid peer: ssl-bump needs the OpenSSL build and its cert helper.
{ have squid && squid_bin=$(command -v squid || echo /usr/sbin/squid) \
    && "$squid_bin" -v 2>&1 | grep -- --with-openssl >/dev/null \
    && [ -x /usr/lib/squid/security_file_certgen ]; } || need_pkgs+=(squid-openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing Debian packages: ${need_pkgs[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}"
fi

venv="$root/.venv"
stamp="$venv/.portcullis-sdk-$OPENAI_VERSION-$ANTHROPIC_VERSION-$HTTPX_VERSION-$PROMETHEUS_CLIENT_VERSION-$HELM_SDK_VERSION-$KUBERNETES_VALIDATE_VERSION"
if [ ! -f "$stamp" ]; then
  say "creating the SDK venv in .venv (openai==$OPENAI_VERSION anthropic==$ANTHROPIC_VERSION)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "openai==$OPENAI_VERSION" "anthropic==$ANTHROPIC_VERSION" "httpx==$HTTPX_VERSION" \
    "prometheus-client==$PROMETHEUS_CLIENT_VERSION" \
    "helm-python-sdk==$HELM_SDK_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  touch "$stamp"
fi
export PORTCULLIS_TEST_PYTHON="$venv/bin/python"
"$PORTCULLIS_TEST_PYTHON" -c 'import openai, anthropic, prometheus_client, helm_python, kubernetes_validate; print("SDKs:", "openai", openai.__version__, "anthropic", anthropic.__version__)'

# mitmproxy for the load generator's peer runs (portcullis-loadgen --peers mitmproxy).
peers_venv="$root/.venv-peers"
peers_reqs="$root/benches/peers-requirements.txt"
peers_stamp="$peers_venv/.portcullis-peers-$(sha256sum "$peers_reqs" | cut -c1-16)"
if [ ! -f "$peers_stamp" ]; then
  say "creating the peers venv in .venv-peers (benches/peers-requirements.txt)"
  rm -rf "$peers_venv"
  python3 -m venv "$peers_venv"
  "$peers_venv/bin/pip" install -q --disable-pip-version-check -r "$peers_reqs"
  touch "$peers_stamp"
fi
"$peers_venv/bin/python" -c 'from mitmproxy.version import VERSION; print("peers: mitmproxy", VERSION)'

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# Supply chain: licences, a single TLS stack, crates from crates.io only (deny.toml).
# Advisories need the RustSec database from GitHub, which CI cannot reach (README).
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -q "cargo-deny $CARGO_DENY_VERSION"; then
  say "installing cargo-deny $CARGO_DENY_VERSION"
  cargo install --locked --quiet cargo-deny --version "$CARGO_DENY_VERSION"
fi
say "cargo deny check licenses bans sources"
cargo deny --log-level error check licenses bans sources

say "cargo test (workspace)"
cargo test --workspace --locked --no-fail-fast

# The benches print figures and assert none; CI only checks that they run.
say "benches run (smoke, debug build, small sizes)"
LEDGER_BENCH_RECORDS=256 cargo test -p portcullis-benches --benches --locked
