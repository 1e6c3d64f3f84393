#!/bin/sh
# Writes this member's raftgate config, then execs "$@" (raftgate run --config ...).
# raftgate's config has no per-node substitution, so the four per-member lines of the
# shared config.yaml are replaced here:
#   node_id:         NODE_NAME (downward API spec.nodeName)
#   raft.id:         this node's line in the members table (ConfigMap raftgate-members)
#   raft.advertise:  HOST_IP (downward API status.hostIP) and RAFT_PORT
#   raft.join:       [] on the node named in `bootstrap`, else every other member's address
# and this node's certificate and key in the Secret are linked to fixed paths.
set -eu
config=${RAFTGATE_CONFIG:-/etc/raftgate/config/config.yaml}
members=${RAFTGATE_MEMBERS:-/etc/raftgate/members}
certs=${RAFTGATE_CERTS:-/etc/raftgate/certs}
run=${RAFTGATE_RUN:-/run/raftgate}
data=${RAFTGATE_DATA:-/var/lib/raftgate}
port=${RAFT_PORT:-7946}
die() { echo "raftgate start: $*" >&2; exit 1; }
[ -n "${NODE_NAME:-}" ] || die "NODE_NAME is not set (downward API spec.nodeName)"
[ -n "${HOST_IP:-}" ] || die "HOST_IP is not set (downward API status.hostIP)"

id='' seeds='' ids=' '
while read -r name mid addr rest || [ -n "${name:-}" ]; do
  case $name in '' | '#'*) continue ;; esac
  [ -n "$addr" ] || die "members: the line of $name needs '<node name> <id> <host:port>'"
  case $mid in '' | *[!0-9]* | 0*) die "members: the id of $name must be a number above 0" ;; esac
  case $ids in *" $mid "*) die "members: id $mid is used twice" ;; esac
  ids="$ids$mid "
  if [ "$name" = "$NODE_NAME" ]; then
    id=$mid
  else
    seeds="$seeds${seeds:+, }\"$addr\""
  fi
done < "$members/members"
[ -n "$id" ] || die "node $NODE_NAME is not in the members table (ConfigMap raftgate-members): add '$NODE_NAME <id> $HOST_IP:$port' with an id never used before"

bootstrap=$(cat "$members/bootstrap" 2>/dev/null || true)
bootstrap=$(echo $bootstrap)
if [ "$bootstrap" = "$NODE_NAME" ]; then
  join='[]'
elif [ -n "$seeds" ]; then
  join="[$seeds]"
else
  die "no other member to join, and this node is not the bootstrap node (raftgate-members, key bootstrap)"
fi
case $HOST_IP in
  *:*) advertise="[$HOST_IP]:$port" ;;
  *) advertise="$HOST_IP:$port" ;;
esac

[ -r "$certs/$NODE_NAME.crt" ] && [ -r "$certs/$NODE_NAME.key" ] ||
  die "the Secret raftgate-peer-tls has no $NODE_NAME.crt/.key: make them with raftgate cert --node $NODE_NAME=$HOST_IP (docs/deploy.md)"
for key in '^node_id:' '^  id:' '^  advertise:' '^  join:'; do
  [ "$(grep -c "$key" "$config")" = 1 ] || die "$config: expected exactly one line matching '$key'"
done
mkdir -p "$run"
ln -sf "$certs/$NODE_NAME.crt" "$run/peer.crt"
ln -sf "$certs/$NODE_NAME.key" "$run/peer.key"
if [ -d "$data" ]; then chmod 700 "$data"; fi
sed -e "s|^node_id:.*|node_id: \"$NODE_NAME\"|" \
  -e "s|^  id:.*|  id: $id|" \
  -e "s|^  advertise:.*|  advertise: \"$advertise\"|" \
  -e "s|^  join:.*|  join: $join|" \
  "$config" > "$run/config.yaml"
echo "raftgate start: node $NODE_NAME is raft member $id at $advertise, join $join" >&2
exec "$@"
