#!/bin/bash
# Run from the project root: `ulimit -n 20000; flock /tmp/bench.lock examples/pg-vs-sqlite.sh [REPS] [SCENARIO...]`.
#
# One node on PostgreSQL against the same build on SQLite, side by side: the load client of
# ../shared/bench (client.js, run by Bun) drives a fresh node on a fresh database for every run
# (SQLite: a new file; PostgreSQL: a new database made with createdb on the local server and dropped
# after), the two backends interleaved run by run. Prints every run as a JSON line, then a table of
# medians with the ratio PostgreSQL / SQLite, and checks the targets of issue 14: stream
# deliveries/s on PostgreSQL at least half of SQLite's; 1,000 submits/s sustained (achieved =
# offered, no errors) with submit-to-first-event p99 under 10 ms on PostgreSQL.
#
#   examples/pg-vs-sqlite.sh 3                       # both default scenarios, 3 runs each (~4 minutes)
#   examples/pg-vs-sqlite.sh 3 "stream users=500 tasks=10 events=50"
#   NODES="1 2 3 4" examples/pg-vs-sqlite.sh 3 nodes  # stream events/s with N nodes on one database
#
# `nodes` starts N PostgreSQL nodes on one fresh database and one client per node (the users split
# between them), all on this machine; events/s is every client's deliveries over the longest wall.
#
# Environment: PGHOST (127.0.0.1), PGPORT (5432), PGUSER (postgres) for createdb/dropdb and the
# nodes; CONFIG=file.toml given to every node, the same for both backends; SWITCHBOARD_LOG (warn);
# NO_BUILD=1 to use the release binary as it is; SB=path to another binary (no build); BUN=path to a bun binary (else fetched once into
# target/bench-bin with `npm pack`, as compare.sh does); BENCH=path to ../shared/bench.
set -u
project=$(pwd)
bench=${BENCH:-$project/../shared/bench}
[ -f "$bench/client.js" ] || { echo "no client.js in $bench (set BENCH)"; exit 1; }
reps=${1:-3}; shift || true
[ $# -gt 0 ] || set -- "stream users=500 tasks=10 events=50" "submit rate=1000 secs=10 conns=50"
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
bins=$project/target/bench-bin
bun=${BUN:-$bins/package/bin/bun}
if [ ! -x "$bun" ]; then
  mkdir -p "$bins" && (cd "$bins" && npm pack -q @oven/bun-linux-x64@1.4.5 >/dev/null 2>&1 && tar xzf oven-bun-linux-x64-*.tgz) || { echo "cannot install bun"; exit 1; }
fi
[ -n "${NO_BUILD:-}${SB:-}" ] || nice -n 10 cargo build --release --quiet || { echo "cargo build --release fails"; exit 1; }
sb=${SB:-$project/target/release/switchboard}
admin=perf-admin-token-0123456789abcdef
work=$(mktemp -d)
results=$work/results.jsonl
srvs=""; db=""
stop_all() {
  for p in $srvs; do kill "$p" 2>/dev/null; done
  for p in $srvs; do wait "$p" 2>/dev/null; done
  srvs=""
  [ -z "$db" ] || dropdb --if-exists "$db" 2>/dev/null
  db=""
}
trap 'stop_all; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 150); do curl -sf "http://127.0.0.1:$1/healthz" >/dev/null && return 0; sleep 0.1; done; return 1; }
# start BACKEND INDEX: a node on the run's database; appends "port:pid" to $nodes
start() {
  local port url log
  port=$(free_port); log=$work/$1-$2.log
  if [ "$1" = sqlite ]; then url="sqlite://$work/db/sb.db"; else url="postgres://$PGUSER@$PGHOST:$PGPORT/$db"; fi
  SWITCHBOARD_ADMIN_TOKEN=$admin SWITCHBOARD_LOG=${SWITCHBOARD_LOG:-warn} "$sb" serve --listen 127.0.0.1:"$port" \
    --database "$url" --node-id "bench-$2" ${CONFIG:+--config "$CONFIG"} >"$log" 2>&1 &
  srvs="$srvs $!"; nodes="$nodes $port:$!"
  wait_up "$port" || { echo "$1 node $2 did not start: $(tail -3 "$log")"; return 1; }
}
# fresh BACKEND N: a new database and N nodes on it
fresh() {
  nodes=""; rm -rf "$work/db"; mkdir -p "$work/db"
  if [ "$1" = postgres ]; then
    db=sbbench_$$_$RANDOM
    createdb "$db" || { echo "createdb $db failed"; return 1; }
  fi
  for i in $(seq "$2"); do start "$1" "$i" || return 1; done
}
# run one client per node against $nodes; prints one JSON object (a node count's sum when several)
drive() { # $@ = scenario args
  local n i=0 outs=() port pid args=("$@")
  n=$(echo $nodes | wc -w)
  if [ "$n" -gt 1 ]; then args=("stream" "users=$(( ${USERS:-500} / n ))" "tasks=10" "events=50"); fi
  for np in $nodes; do
    port=${np%%:*}; pid=${np##*:}; i=$((i+1))
    timeout 300 "$bun" "$bench/client.js" "http://127.0.0.1:$port" "$pid" "$admin" "${args[@]}" >"$work/out-$i" 2>&1 &
    outs+=("$!")
  done
  for p in "${outs[@]}"; do wait "$p"; done
  for k in $(seq "$i"); do tail -1 "$work/out-$k"; done | python3 -c '
import json, sys
lines = [l.strip() for l in sys.stdin if l.strip()]
try:
    outs = [json.loads(l) for l in lines]
except Exception:
    print(json.dumps({"error": " | ".join(lines)[-300:]})); sys.exit()
if len(outs) == 1:
    print(json.dumps(outs[0])); sys.exit()
wall = max(o["wall_s"] for o in outs)
d = sum(o["delivered"] for o in outs)
print(json.dumps({"scenario": "nodes", "nodes": len(outs), "delivered": d, "expected": sum(o["expected"] for o in outs),
                  "wall_s": wall, "deliveries_per_s": round(d / wall),
                  "latency_ms_p99_worst": max(o["latency_ms_p99"] for o in outs), "gaps": sum(o["gaps"] for o in outs)}))'
}
record() { # who rep args json
  echo "{\"who\":\"$1\",\"rep\":$2,\"args\":\"$3\",\"out\":$4}" | tee -a "$results"
}

for sc in "$@"; do
  for r in $(seq "$reps"); do
    if [ "$sc" = nodes ]; then
      for n in ${NODES:-1 2 3 4}; do
        fresh postgres "$n" && record "postgres x$n" "$r" nodes "$(drive stream users=${USERS:-500} tasks=10 events=50)"
        stop_all
      done
      continue
    fi
    for who in sqlite postgres; do
      fresh "$who" 1 && record "$who" "$r" "$sc" "$(drive $sc)"
      stop_all
    done
  done
done

python3 - "$results" <<'EOF'
import json, statistics, sys
from collections import defaultdict
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
figs = defaultdict(lambda: defaultdict(list))
for r in runs:
    for k, v in r["out"].items():
        if isinstance(v, (int, float)):
            figs[r["args"]][(k, r["who"])].append(v)
        elif k == "error":
            print(f"error ({r['who']}, {r['args']}): {v}")
med = lambda xs: statistics.median(xs) if xs else None
verdicts = []
for args, f in figs.items():
    whos = sorted({w for _, w in f}, key=lambda w: (not w.startswith("sqlite"), w))
    print(f"\n{args}  (medians of {max(len(v) for v in f.values())} runs)")
    print("  " + f"{'figure':28s}" + "".join(f"{w:>14s}" for w in whos) + ("   pg/sqlite" if "sqlite" in whos else ""))
    for k in sorted({k for k, _ in f}):
        vals = [med(f.get((k, w), [])) for w in whos]
        line = "  " + f"{k:28s}" + "".join(f"{'-' if v is None else v:>14}" for v in vals)
        if "sqlite" in whos and "postgres" in whos and vals[0] and vals[1] is not None:
            line += f"   {vals[1] / vals[0]:9.2f}"
        print(line)
    g = lambda k, w: med(f.get((k, w), []))
    if args.startswith("stream") and g("deliveries_per_s", "sqlite"):
        ratio = g("deliveries_per_s", "postgres") / g("deliveries_per_s", "sqlite")
        verdicts.append((f"stream deliveries/s postgres/sqlite = {ratio:.2f} (target >= 0.5)", ratio >= 0.5))
    if args.startswith("submit") and g("offered_per_s", "postgres"):
        ach, off = g("achieved_per_s", "postgres"), g("offered_per_s", "postgres")
        p99 = g("first_event_ms_p99", "postgres")
        errs, done, sent = g("errors", "postgres"), g("completed", "postgres"), g("submitted", "postgres")
        verdicts.append((f"submit on postgres: {done} of {sent} completed, {errs} errors, achieved {ach}/s of {off}/s offered",
                         done == sent and not errs and ach >= 0.98 * off))
        verdicts.append((f"submit on postgres: submit to first event p99 = {p99} ms (target < 10)", p99 is not None and p99 < 10))
if verdicts:
    print()
    for text, ok in verdicts:
        print(("  ok    " if ok else "  SHORT ") + text)
EOF
