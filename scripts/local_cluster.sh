#!/usr/bin/env bash
# scripts/local_cluster.sh start [N]   a Ray head plus N worker nodes (1 CPU each) on this machine
# scripts/local_cluster.sh stop        stop them
#
# Then point any raydistill command at it: `raydistill sweep search_spaces/smoke.yaml
# --out runs/smoke --address auto` (or RAY_ADDRESS=127.0.0.1:6380). Token auth is off and
# everything listens on 127.0.0.1 only: this is for trying multi-node behaviour on a laptop.
set -euo pipefail
RAY=${RAY:-.venv/bin/ray}
PORT=${PORT:-6380}
export RAY_AUTH_MODE=disabled
case "${1:-}" in
  start)
    N=${2:-2}
    "$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus=1 \
      --dashboard-host=127.0.0.1 --disable-usage-stats
    for i in $(seq 1 "$N"); do
      "$RAY" start --address="127.0.0.1:$PORT" --num-cpus=1 --disable-usage-stats \
        --node-manager-port=$((PORT + 100 + i)) --object-manager-port=$((PORT + 200 + i))
    done
    echo "local Ray cluster: 1 head + $N workers at 127.0.0.1:$PORT; use --address auto"
    ;;
  stop)
    "$RAY" stop --force
    ;;
  *)
    echo "usage: $0 start [N] | stop" >&2
    exit 2
    ;;
esac
