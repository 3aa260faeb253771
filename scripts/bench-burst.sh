#!/usr/bin/env bash
# Many `rnet run` launchers at once into one rnetd: do they all attach, and how long does it take?
#
#   sudo ./scripts/bench-burst.sh          # as root; a few minutes; prints one line per burst
#
# Environment: BURSTS (burst sizes, each started at once and torn down after; default
# "50 100 200"), TOTAL and STEP (then TOTAL containers in bursts of STEP, each burst once the
# previous one has attached, all kept until the end; default 1000 and 100; TOTAL=0 skips it),
# LIMIT (seconds a burst may take before the launchers not yet up count as stuck; default 120,
# above the launcher's own 30 s wait for an answer), BIN (the directory of rnetd and rnet;
# default: a release build of this tree).
#
# rnetd runs as the test rig runs it (tests/src/lib.rs): in a "host" network namespace of its
# own with an uplink namespace behind a veth pair as the internet, its runtime and state
# directories in a temp dir, and RNET_TIMINGS=1 (one line per change, with the time it waited
# for the registry's lock). Each launcher is `rnet run -n -M NAME -- sh -c 'date; exec sleep
# 600'` started with `nsenter --net` into the host namespace, RNET_TIMINGS=1 in its environment
# too (its attach request's round trip on stderr). Per burst it prints: launchers, failed
# (exited before their payload ran, with each distinct message and its count), stuck (neither
# up nor exited after LIMIT), the time from the first start to the last payload up, and the
# launchers' wall time from their start to their payload's first line (p50/p99/max), the
# attach round trip the launchers saw, and rnetd's lock wait and attach time. After each burst
# of the first part, all its launchers get SIGTERM at once and the time until rnetd lists no
# machine is the teardown. Exits 1 when any launcher failed or got stuck.
#
# Nothing touches this machine's network: everything lives in namespaces named rntb<pid>*, removed
# with the temp dir on exit (also on failure or Ctrl-C), after every launcher and rnetd started
# here got SIGTERM (and SIGKILL if they outlive it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-bench.sh
bench_init rntb
scripts/install-deps.sh scripts/packages.txt scripts/packages-bench.txt

BURSTS=${BURSTS:-"50 100 200"}
TOTAL=${TOTAL:-1000}
STEP=${STEP:-100}
LIMIT=${LIMIT:-120}
[ -n "${BIN:-}" ] || bench_build

chmod 755 "$TMP"
HOST=${P}h      # rnetd's "host" netns
UP=${P}u        # the uplink netns (the internet)
RUN=$TMP/run
BAD=0           # launchers failed or stuck, over all bursts
LAUNCHERS=()    # ROUND_DIR/NAME of every launcher started here and not yet stopped

# On exit, before rnetd: every launcher that wrote its pid (also those of a burst cut short), not
# only LAUNCHERS.
stop_all_launchers() {
  local all=()
  for f in "$TMP"/b*/pid/*; do [ -e "$f" ] && all+=("${f%/pid/*}/${f##*/}"); done
  stop_launchers "${all[@]}"
}
bench_on_exit stop_all_launchers

# The pids of the launchers $@ (ROUND_DIR/NAME) still running: those whose exit code is not
# written yet (so a pid is never signalled after its launcher was reaped).
running() {
  local l pid rest
  for l in "$@"; do
    [ -e "${l%/*}/rc/${l##*/}" ] && continue
    read -r pid rest < "${l%/*}/pid/${l##*/}" && echo "$pid"
  done
}

# SIGTERM to the launchers $@ (each forwards it to its payload and exits), SIGKILL to those still
# there after 10 s.
stop_launchers() {
  [ $# -gt 0 ] || return 0
  local pids
  pids=$(running "$@")
  # shellcheck disable=SC2086 # one word per pid
  [ -n "$pids" ] && kill -TERM $pids 2>/dev/null
  for _ in $(seq 100); do
    [ -z "$(running "$@")" ] && return 0
    sleep 0.1
  done
  pids=$(running "$@")
  # shellcheck disable=SC2086 # one word per pid
  [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
  return 0
}

rnet() { "$BIN/rnet" --runtime-dir "$RUN" "$@"; }

# Machines rnetd has attached (entries of `rnet list --json` with rnetd's fields).
attached() { rnet list --json 2>/dev/null | jq 'map(select(.network != null)) | length' 2>/dev/null || echo 0; }

now() { echo "$EPOCHREALTIME"; }

# Seconds from time $2 to time $1.
since() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a - b}'; }

# p50/p99/max (ms) of the numbers (ms) on stdin, or "-" when there are none.
pcts() {
  sort -g | awk '{v[NR] = $1} END {
    if (NR == 0) { print "-"; exit }
    i50 = int(NR * 0.50 + 0.5); if (i50 < 1) i50 = 1
    i99 = int(NR * 0.99 + 0.5); if (i99 < 1) i99 = 1; if (i99 > NR) i99 = NR
    printf "%.1f/%.1f/%.1f", v[i50], v[i99], v[NR] }'
}

# The topology: as the rig's (tests/src/lib.rs), without IPv6 addresses on the uplink.
bench_uplink "$HOST" "$UP"
echo "nameserver 203.0.113.1" > "$TMP/resolv.conf"
bench_start_rnetd "$HOST" RNET_TIMINGS=1 --resolv-conf "$TMP/resolv.conf" \
  --pool6 fd52:6e65:7400::/48 --log info
RSS0=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$RNETD/status")
echo "rnetd $BIN/rnetd (pid $RNETD, RSS $RSS0 MiB); $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"

# Starts launcher $1 in round directory $2: its start time, pid, stderr, exit code (once it
# exits) and its payload's first line go to files named after it there.
launch() {
  local name=$1 r=$2
  (
    start=$(now)
    nsenter --net="/run/netns/$HOST" env RNET_TIMINGS=1 "$BIN/rnet" --runtime-dir "$RUN" \
      run -n -M "$name" -- sh -c "date +%s.%N > $r/up/$name; exec sleep 600" \
      < /dev/null > /dev/null 2> "$r/err/$name" &
    echo "$! $start" > "$r/pid/$name"
    rc=0
    wait $! || rc=$?
    echo "$rc" > "$r/rc/$name"
  ) &
}

# Starts launchers $2.. $3 (names b$2 ..) at once as round $1, waits until each is up or has
# exited (at most LIMIT s), prints the round's line and appends the pids to LAUNCHERS.
burst() {
  local round=$1 first=$2 last=$3
  local r=$TMP/b$first n=$((last - first + 1))
  mkdir -p "$r/up" "$r/err" "$r/pid" "$r/rc"
  local log_from
  log_from=$(wc -l < "$TMP/rnetd.log")
  local t0
  t0=$(now)
  for i in $(seq "$first" "$last"); do launch "b$i" "$r"; done
  local spawned
  spawned=$(now)
  local end=$((SECONDS + LIMIT)) settled
  while :; do
    settled=$( (ls "$r/up"; ls "$r/rc") | sort -u | wc -l)
    [ "$settled" -ge "$n" ] && break
    [ $SECONDS -ge $end ] && break
    sleep 0.1
  done
  # Every launcher has written its pid by now, or is stuck before it (counted below).
  for f in "$r"/pid/*; do LAUNCHERS+=("$r/${f##*/}"); done
  local up failed stuck
  up=$(find "$r/up" -mindepth 1 | wc -l)
  failed=$(find "$r/rc" -mindepth 1 | wc -l)
  stuck=$((n - settled))
  BAD=$((BAD + failed + stuck))
  local last_up="$t0"
  [ "$up" -gt 0 ] && last_up=$(cat "$r"/up/* | sort -g | tail -1)
  local wall attach_rt lock_w attach_d
  wall=$(for f in "$r"/up/*; do
      [ -e "$f" ] || continue
      name=${f##*/}
      echo "$(cat "$f") $(cut -d' ' -f2 "$r/pid/$name")"
    done | awk '{printf "%.3f\n", ($1 - $2) * 1000}' | pcts)
  attach_rt=$(cat "$r"/err/* 2>/dev/null | awk '/^rnet: timing: attach machine/ {print $(NF-1)}' | pcts)
  # rnetd's timing lines of this round: `attach NAME: T ms = check C, lock L, ...`.
  tail -n +"$((log_from + 1))" "$TMP/rnetd.log" | grep -o 'attach b[0-9]*: [0-9.]* ms = .*' \
    > "$r/timings" || true
  lock_w=$(grep -o ', lock [0-9.]*' "$r/timings" | awk '{print $NF}' | pcts)
  attach_d=$(awk '{print $3}' "$r/timings" | pcts)
  printf '%-7s %5d launchers  up %5d  failed %3d  stuck %3d  spawn %5s s  all up %6s s  wall p50/p99/max %s ms  attach round trip %s ms  rnetd: lock wait %s ms, attach %s ms  (load %s)\n' \
    "$round" "$n" "$up" "$failed" "$stuck" "$(since "$spawned" "$t0")" \
    "$(since "$last_up" "$t0")" "$wall" "$attach_rt" "$lock_w" "$attach_d" \
    "$(cut -d' ' -f1 /proc/loadavg)"
  # Where rnetd's attach time went besides the lock wait: the phases' mean per attach.
  awk -F' = ' '{ n++; k = split($2, ph, ", "); for (i = 1; i <= k; i++) {
      m = split(ph[i], w, " "); name = w[1]; for (j = 2; j < m; j++) name = name "_" w[j]
      if (name != "lock") sum[name] += w[m] } }
    END { if (n) for (p in sum) printf "%.2f %s\n", sum[p] / n, p }' "$r/timings" \
    | sort -rg | head -6 | awk '{printf "%s%s %s", (NR > 1 ? ", " : "        rnetd phases, mean ms per attach (lock wait aside): "), $2, $1} END {if (NR) print ""}'
  if [ "$failed" -gt 0 ]; then
    for f in "$r"/rc/*; do
      msg=$(grep -v '^rnet: timing:' "$r/err/${f##*/}" | head -1 || true)
      echo "${msg:-(exit code $(cat "$f"), no message)}"
    done | sort | uniq -c | sed 's/^/        failed: /'
  fi
}

# Sends SIGTERM to every launcher started so far and prints how long rnetd took to list none.
teardown() {
  local t0 n
  t0=$(now)
  n=$(attached)
  stop_launchers "${LAUNCHERS[@]}"
  LAUNCHERS=()
  for _ in $(seq 1200); do [ "$(attached)" = 0 ] && break; sleep 0.1; done
  printf '        teardown of %s machines: %s s (%s still listed)\n' "$n" \
    "$(since "$(now)" "$t0")" "$(attached)"
}

next=1
for b in $BURSTS; do
  burst "at-once" "$next" $((next + b - 1))
  next=$((next + b))
  teardown
done

if [ "$TOTAL" -gt 0 ]; then
  echo "$TOTAL containers in bursts of $STEP, kept:"
  base=$next
  while [ $((next - base)) -lt "$TOTAL" ]; do
    burst "N=$((next - base + STEP))" "$next" $((next + STEP - 1))
    next=$((next + STEP))
  done
  echo "        rnetd RSS $(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$RNETD/status") MiB with $(attached) machines"
  teardown
fi
kill -0 "$RNETD" 2>/dev/null || { echo "rnetd died; log tail:"; tail -20 "$TMP/rnetd.log"; exit 1; }
if grep -q panicked "$TMP/rnetd.log"; then echo "rnetd panicked:"; grep -A3 panicked "$TMP/rnetd.log"; exit 1; fi
[ "$BAD" = 0 ] || { echo "$BAD launchers failed or got stuck"; exit 1; }
echo "no launcher failed"
