#!/bin/sh
# Portcullis sidecar: make the proxy the pod's only way out (the Istio pattern).
#
# Runs once, as root with NET_ADMIN and NET_RAW, in an init container: the rules live in the
# pod's network namespace, which every container of the pod shares. For each of iptables
# and ip6tables:
#   nat    every new outbound TCP connection goes to the transparent listener
#          (PORTCULLIS_TCP_PORT), every UDP DNS query to the DNS responder
#          (PORTCULLIS_DNS_PORT), except the proxy's own (PROXY_UID) and loopback;
#   filter anything else a non-proxy process sends off the pod (other UDP, ICMP, SCTP...)
#          is rejected, so nothing bypasses the proxy without TCP.
# Exemption is by UID only: no container but the proxy may run as PROXY_UID.
set -eu

PROXY_UID="${PROXY_UID:-1337}"
TCP_PORT="${PORTCULLIS_TCP_PORT:-15001}"
DNS_PORT="${PORTCULLIS_DNS_PORT:-15053}"
IPTABLES="${IPTABLES:-iptables}"
IP6TABLES="${IP6TABLES:-ip6tables}"

case "$PROXY_UID$TCP_PORT$DNS_PORT" in
  *[!0-9]* | "") echo "iptables.sh: PROXY_UID and the ports must be numbers" >&2; exit 64 ;;
esac

# $1: iptables or ip6tables binary; $2: the loopback address the listeners bind.
apply() {
  ipt=$1 loopback=$2

  # Start clean, so a restarted init container in the same namespace does not stack rules.
  "$ipt" -t nat -D OUTPUT -j PORTCULLIS_OUTPUT 2>/dev/null || true
  "$ipt" -t nat -F PORTCULLIS_OUTPUT 2>/dev/null || true
  "$ipt" -t nat -X PORTCULLIS_OUTPUT 2>/dev/null || true
  "$ipt" -t filter -D OUTPUT -j PORTCULLIS_EGRESS 2>/dev/null || true
  "$ipt" -t filter -F PORTCULLIS_EGRESS 2>/dev/null || true
  "$ipt" -t filter -X PORTCULLIS_EGRESS 2>/dev/null || true

  "$ipt" -t nat -N PORTCULLIS_OUTPUT
  # The proxy's own upstream connections and DNS lookups leave as they are.
  "$ipt" -t nat -A PORTCULLIS_OUTPUT -m owner --uid-owner "$PROXY_UID" -j RETURN
  # In-pod traffic (the agent talking to a local helper) is not egress.
  "$ipt" -t nat -A PORTCULLIS_OUTPUT -d "$loopback" -j RETURN
  # The agent's resolver, whatever nameserver it is configured with, asks the responder.
  "$ipt" -t nat -A PORTCULLIS_OUTPUT -p udp --dport 53 -j REDIRECT --to-ports "$DNS_PORT"
  # Every other TCP connection, to any port, goes through the policy.
  "$ipt" -t nat -A PORTCULLIS_OUTPUT -p tcp -j REDIRECT --to-ports "$TCP_PORT"
  "$ipt" -t nat -A OUTPUT -j PORTCULLIS_OUTPUT

  # After NAT the agent's redirected packets are addressed to loopback; whatever else
  # still heads off the pod was not redirectable (UDP, ICMP, ...) and is refused. (The
  # output interface is fixed before NAT, so the redirected packets match -d, not -o lo.)
  "$ipt" -t filter -N PORTCULLIS_EGRESS
  "$ipt" -t filter -A PORTCULLIS_EGRESS -d "$loopback" -j RETURN
  "$ipt" -t filter -A PORTCULLIS_EGRESS -o lo -j RETURN
  "$ipt" -t filter -A PORTCULLIS_EGRESS -m owner --uid-owner "$PROXY_UID" -j RETURN
  # Replies on connections that others opened to the pod (probes, Services).
  "$ipt" -t filter -A PORTCULLIS_EGRESS -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
  # IPv6 neighbour discovery has no socket owner; without it no IPv6 packet leaves at all.
  if [ "$ipt" = "$IP6TABLES" ]; then
    for type in neighbour-solicitation neighbour-advertisement router-solicitation; do
      "$ipt" -t filter -A PORTCULLIS_EGRESS -p ipv6-icmp --icmpv6-type "$type" -j RETURN
    done
  fi
  "$ipt" -t filter -A PORTCULLIS_EGRESS -j REJECT
  "$ipt" -t filter -A OUTPUT -j PORTCULLIS_EGRESS
}

apply "$IPTABLES" 127.0.0.1/32
"$IPTABLES-save"

# A pod without IPv6 has no IPv6 path to close; with it, IPv6 gets the same rules or the
# pod does not start.
if [ -e /proc/net/if_inet6 ]; then
  apply "$IP6TABLES" ::1/128
  "$IP6TABLES-save"
else
  echo "iptables.sh: IPv6 is not enabled in this pod; no ip6tables rules needed"
fi
