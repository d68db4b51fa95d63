#!/usr/bin/env bash
# examples/demo.sh - README's first command: N scanner processes, one feed of
# postings, one private redis-server, and an audit of the bid store.
#
#   bash examples/demo.sh [INSTANCES [POSTINGS]]      (defaults 4 and 200)
#
# On a fresh Debian machine it installs what is missing (apt-get, as root or
# via sudo; the package list of tests/run), builds with meson, starts its own
# redis-server on a unix socket in a temp dir (--port 0: nothing listens on
# the network; --save '' --appendonly no: nothing is written), runs the
# scanners (examples/scanner.c) as separate processes, shows their progress,
# and prints a summary. Duplicate bids are counted from the bid store itself
# (bids:<marketplace>:<posting> lists in Redis), not from what the scanners
# claim; the demo fails if there is one. For contrast it then runs the same
# feed without the lock. Without redis-server (and no way to install it) it
# runs the in-memory backend in one process instead, and says so.
#
# Environment: DEMO_MEMORY=1 forces the in-memory run; DEMO_NO_CONTRAST=1
# skips the run without the lock.
set -u
cd "$(dirname "$0")/.." || exit 1
top=$(pwd)
n=${1:-4}
postings=${2:-200}
case "$n$postings" in *[!0-9]*|'') echo "usage: bash examples/demo.sh [INSTANCES [POSTINGS]]" >&2; exit 64;; esac
[ "$n" -ge 1 ] && [ "$n" -le 32 ] && [ "$postings" -ge 1 ] && [ "$postings" -le 9999 ] ||
  { echo "demo: INSTANCES 1..32, POSTINGS 1..9999" >&2; exit 64; }
say() { printf '%s\n' "$*"; }
logdir="$top/build-logs"; mkdir -p "$logdir"

# ---- 1. what is missing --------------------------------------------------------
pkgs=(build-essential meson ninja-build pkg-config libhiredis-dev libev-dev libuv1-dev
      uuid-dev libcriterion-dev redis-server redis-tools)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "demo: installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  { timeout 300 $sudo apt-get update -qq && timeout 900 $sudo apt-get install -y -qq "${missing[@]}"; } \
    >"$logdir/demo-apt.log" 2>&1 || say "demo: apt-get failed (see build-logs/demo-apt.log); going on with what is there"
fi

# ---- 2. build --------------------------------------------------------------------
say "demo: building (meson + ninja, log in build-logs/demo-build.log)"
{ [ -d build ] || timeout 300 meson setup build; } >"$logdir/demo-build.log" 2>&1 &&
  timeout 900 ninja -C build -j2 >>"$logdir/demo-build.log" 2>&1 || {
  tail -n 20 "$logdir/demo-build.log" >&2
  say "demo: the build failed; the packages it needs: ${pkgs[*]}" >&2
  exit 1
}
scanner=$top/build/examples/scanner
tmp=$(mktemp -d /tmp/bidlock-demo.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- without redis-server: one process, in-memory backend -------------------------
if [ "${DEMO_MEMORY:-0}" = 1 ] || ! command -v redis-server >/dev/null; then
  say ""
  if [ "${DEMO_MEMORY:-0}" = 1 ]; then say "NOTICE: DEMO_MEMORY=1: not using redis-server."
  else say "NOTICE: redis-server is not available (get it with: sudo apt-get install redis-server)."; fi
  say "NOTICE: running the IN-MEMORY backend instead: $n scanner instances inside ONE process,"
  say "NOTICE: sharing one in-process lock table and bid store. This shows the scanner logic;"
  say "NOTICE: it cannot show locking across processes or machines, which needs Redis."
  say ""
  timeout 120 "$scanner" --memory --instances "$n" --postings "$postings" --think-ms 10 \
    --poll-ms 40 --name s >"$tmp/mem.json" # progress: its stderr
  rc=$?
  audit=$(grep '"store"' "$tmp/mem.json")
  num() { sed -E "s/.*\"$1\":([0-9]+).*/\1/" <<<"$2"; }
  waits=0; while read -r l; do waits=$((waits + $(num lock_waits "$l"))); done < <(grep '"instance"' "$tmp/mem.json")
  say "Summary (in-memory backend, one process)"
  say "  postings in the feed   $postings"
  say "  bids placed            $(num bids "$audit")   (on $(num bid_on "$audit") postings; the rest were over budget)"
  say "  duplicate bids         $(num duplicates "$audit")   (from the in-process bid store)"
  say "  lock waits             $waits"
  say "  instance shares        $(sed -E 's/.*"bids_by":\{([^}]*)\}.*/\1/; s/"//g; s/,/  /g; s/:/ /g' <<<"$audit")"
  [ "$rc" -eq 0 ] && [ "$(num duplicates "$audit")" = 0 ]
  exit $?
fi

# ---- 3. a private redis-server ------------------------------------------------------
sock=$tmp/redis.sock
redis-server --port 0 --unixsocket "$sock" --unixsocketperm 700 --bind 127.0.0.1 \
  --save '' --appendonly no --dir "$tmp" --daemonize no --loglevel warning \
  >"$tmp/redis.log" 2>&1 &
redis_pid=$!
for _ in $(seq 100); do
  [ "$(redis-cli -s "$sock" PING 2>/dev/null)" = PONG ] && break
  sleep 0.05
done
[ "$(redis-cli -s "$sock" PING 2>/dev/null)" = PONG ] ||
  { say "demo: redis-server did not start:" >&2; cat "$tmp/redis.log" >&2; exit 1; }

# run_scanners MARKETPLACE [scanner args...]: N processes on one feed, with
# progress; their JSON lines end up in $tmp/MARKETPLACE-sK.json.
run_scanners() {
  local mp=$1; shift
  pids=()
  for i in $(seq "$n"); do
    timeout 120 "$scanner" --unix "$sock" --marketplace "$mp" --name "s$i" \
      --postings "$postings" --inflight 4 --think-ms 10 --poll-ms 40 "$@" \
      >"$tmp/$mp-s$i.json" 2>"$tmp/$mp-s$i.log" &
    pids+=($!)
  done
  local running=1 line prev=""
  while [ $running -eq 1 ]; do
    running=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && running=1; done
    line=""
    for i in $(seq "$n"); do
      line+=$(tail -n 1 "$tmp/$mp-s$i.log" 2>/dev/null |
        sed -nE 's/^\[([^]]*)\] ([0-9]+)\/[0-9]+ seen, ([0-9]+) bids.*/\1 \2 seen \3 bids   /p')
    done
    if [ -n "$line" ] && [ "$line" != "$prev" ]; then
      if [ -t 1 ]; then printf '\r  %s' "$line"; else printf '  %s\n' "$line"; fi
      prev=$line
    fi
    [ $running -eq 1 ] && sleep 0.5
  done
  [ -t 1 ] && printf '\n'
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  pids=()
  return $rc
}

# audit MARKETPLACE: read the bid store. Prints postings-bid-on, bids,
# duplicates, then "name count" pairs, one value a line.
audit() {
  redis-cli -s "$sock" EVAL "
    local on, bids, dup, by = 0, 0, 0, {}
    for _, k in ipairs(redis.call('KEYS', 'bids:' .. ARGV[1] .. ':*')) do
      local v = redis.call('LRANGE', k, 0, -1)
      on = on + 1; bids = bids + #v
      if #v > 1 then dup = dup + #v - 1 end
      for _, b in ipairs(v) do
        local who = string.match(b, '^(.*):[0-9]+\$') or b
        by[who] = (by[who] or 0) + 1
      end
    end
    local out = {on, bids, dup}
    for who, c in pairs(by) do out[#out + 1] = who .. ' ' .. c end
    return out" 0 "$1"
}

say ""
say "bidlock demo: $n scanner processes, $postings postings, a private redis-server ($sock)"
say "each scanner: lock posting -> check bid store -> think -> bid -> release + mark done"
run_scanners demo; src=$?
mapfile -t a < <(audit demo)
waits=0; dones=0; claimed=0
num() { sed -E "s/.*\"$1\":([0-9]+).*/\1/" <<<"$2"; }
for i in $(seq "$n"); do
  j=$(cat "$tmp/demo-s$i.json")
  [ -n "$j" ] || { say "demo: scanner s$i printed nothing; its log:" >&2; cat "$tmp/demo-s$i.log" >&2; src=1; continue; }
  waits=$((waits + $(num lock_waits "$j"))); dones=$((dones + $(num "done" "$j")))
  claimed=$((claimed + $(num bids "$j")))
done
shares=""
while read -r who c; do
  [ -n "$who" ] && shares+="$who $c ($((100 * c / (a[1] > 0 ? a[1] : 1)))%)   "
done < <(printf '%s\n' "${a[@]:3}" | sort -V)
say ""
say "Summary"
say "  postings in the feed      $postings"
say "  bids placed               ${a[1]}   (on ${a[0]} postings; the others were over budget)"
say "  duplicate bids            ${a[2]}   (counted in the bid store)"
say "  lock waits                $waits   (attempts that found a posting locked by another scanner)"
say "  found done elsewhere      $dones   (postings another scanner had already decided)"
say "  instance shares           $shares"
[ "$claimed" = "${a[1]}" ] || say "  WARNING: the scanners claim $claimed bids, the store holds ${a[1]}"
ok=1
[ "${a[2]}" = 0 ] && [ $src -eq 0 ] || ok=0

if [ "${DEMO_NO_CONTRAST:-0}" != 1 ]; then
  run_scanners nolock --no-lock >/dev/null 2>&1
  mapfile -t b < <(audit nolock)
  say "  without the lock          ${b[2]} duplicate bids on the same feed (${b[1]} bids on ${b[0]} postings)"
fi
if [ $ok -eq 1 ]; then say "OK: one bid per posting at most."; else say "FAILED: see above" >&2; exit 1; fi
