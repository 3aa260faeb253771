# shellcheck shell=bash
# The set-up the benchmark scripts (scripts/bench-*.sh) share; sourced, not run:
#
#   cd "$(dirname "$0")/.."
#   . scripts/lib-bench.sh
#   bench_init rnx                  # root check, cargo's PATH, P=rnx<pid>, TMP, the exit trap
#   scripts/install-deps.sh ...     # each script installs what it needs
#   bench_build                     # release build of rnetd and rnet; BIN=its directory
#   bench_netns "${P}h"             # a netns (lo up), deleted on exit
#   bench_start_rnetd "${P}h" [VAR=VALUE...] RNETD_ARGS...   # RNETD=its pid
#
# On exit (also on failure or Ctrl-C) bench_cleanup runs once: the script's own steps
# (bench_on_exit), then SIGTERM to the pids it tracked (bench_track; SIGKILL to those still there
# after 10 s), then rnetd the same way (5 s), then every process left in the netns made here the
# same way (5 s) and the netns is deleted, then TMP is removed. Nothing here touches the
# machine's own network: every netns is one this script created, named with its prefix and pid.

# Checks that the script runs as root, puts cargo on PATH, makes P (PREFIX and the script's pid:
# the prefix of every netns and link it creates) and the temp dir TMP (/tmp/$P-XXXXXX), and
# registers bench_cleanup for the script's exit.
bench_init() {
    [ "$(id -u)" = 0 ] || {
        echo "scripts/${0##*/}: run as root (it creates network namespaces)" >&2
        exit 1
    }
    command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
    P=$1$$
    BENCH_NETNS=()
    BENCH_PIDS=()
    BENCH_HOOKS=()
    RNETD=
    TMP=$(mktemp -d "/tmp/$P-XXXXXX")
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# A release build of rnetd and rnet (and the packages in "$@", e.g. `-p rnet-tests`); BIN is the
# directory of the binaries.
# shellcheck disable=SC2120 # the packages are optional
bench_build() {
    cargo build --quiet --release -p rnet-netd -p rnet-launcher "$@" --bins
    BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
}

# Runs function $1 of the script on exit, before anything else is stopped.
bench_on_exit() { BENCH_HOOKS+=("$1"); }

# Stops the pids "$@" on exit (those still running then).
bench_track() { BENCH_PIDS+=("$@"); }

# SIGTERM to the pids "$@", SIGKILL to those still running after $BENCH_GRACE (default 10) s,
# then reaps them; they are no longer tracked.
bench_stop() {
    [ $# -gt 0 ] || return 0
    local pid alive
    kill -TERM "$@" 2>/dev/null || true
    for _ in $(seq $((${BENCH_GRACE:-10} * 10))); do
        alive=
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; break; fi
        done
        [ -n "$alive" ] || break
        sleep 0.1
    done
    for pid in "$@"; do
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
        wait "$pid" 2>/dev/null || true
    done
    local keep=() p
    for p in "${BENCH_PIDS[@]}"; do
        for pid in "$@"; do [ "$p" = "$pid" ] && continue 2; done
        keep+=("$p")
    done
    BENCH_PIDS=("${keep[@]}")
    return 0
}

# Network namespaces "$@" with their loopback up, deleted on exit.
bench_netns() {
    local ns
    for ns in "$@"; do
        ip netns add "$ns"
        [[ " ${BENCH_NETNS[*]} " == *" $ns "* ]] || BENCH_NETNS+=("$ns")
        ip -n "$ns" link set lo up
    done
}

# Deletes the netns "$@" (made with bench_netns) that exist, after a SIGTERM to every process
# still in them (such as a launcher started just as the script was stopped, before it was
# tracked: it removes its cgroup on SIGTERM) and a SIGKILL to those still there after 5 s.
bench_netns_del() {
    local ns pids
    for ns in "$@"; do
        ip netns list | grep -qw "$ns" || continue
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        if [ -n "$pids" ]; then
            # shellcheck disable=SC2086 # one word per pid
            kill -TERM $pids 2>/dev/null || true
            for _ in $(seq 50); do
                pids=$(ip netns pids "$ns" 2>/dev/null || true)
                [ -n "$pids" ] || break
                sleep 0.1
            done
            # shellcheck disable=SC2086
            [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
        fi
        ip netns del "$ns" 2>/dev/null || true
    done
    return 0
}

# The rig's uplink (tests/src/lib.rs), without IPv6: netns $2 plays the internet at 203.0.113.1
# behind a veth pair (${P}dn there, ${P}up in $1), netns $1 has 203.0.113.2 and its default route
# through it. Makes both netns.
bench_uplink() {
    local host=$1 up=$2
    bench_netns "$host" "$up"
    ip link add "${P}up" netns "$host" type veth peer name "${P}dn" netns "$up"
    ip -n "$host" addr add 203.0.113.2/24 dev "${P}up"
    ip -n "$up" addr add 203.0.113.1/24 dev "${P}dn"
    ip -n "$host" link set "${P}up" up
    ip -n "$up" link set "${P}dn" up
    ip -n "$host" route add default via 203.0.113.1
}

# Starts $BIN/rnetd in netns $1 (`nsenter --net`, which keeps /sys as it is, as the rig does)
# with its runtime directory $TMP/run, its state directory $TMP/state, the environment variables
# given first (VAR=VALUE words) and the options after them; its stderr goes to $TMP/rnetd.log.
# Sets RNETD (rnetd's own pid) and waits for its socket; without it, prints the log and exits 1.
bench_start_rnetd() {
    local ns=$1 env=()
    shift
    while [ $# -gt 0 ] && [[ $1 != -* && $1 == *=* ]]; do env+=("$1"); shift; done
    mkdir -p "$TMP/run" "$TMP/state"
    nsenter --net="/run/netns/$ns" env "${env[@]}" "$BIN/rnetd" --runtime-dir "$TMP/run" \
        --state-dir "$TMP/state" "$@" 2>>"$TMP/rnetd.log" &
    RNETD=$!
    for _ in $(seq 100); do
        [ -S "$TMP/run/rnetd.sock" ] && return 0
        kill -0 "$RNETD" 2>/dev/null || break
        sleep 0.1
    done
    echo "rnetd did not start:" >&2
    cat "$TMP/rnetd.log" >&2
    exit 1
}

# Stops rnetd (SIGTERM, SIGKILL after 5 s) if it runs.
bench_stop_rnetd() {
    [ -n "$RNETD" ] || return 0
    BENCH_GRACE=5 bench_stop "$RNETD"
    RNETD=
}

# Exits 1 with rnetd's log when it panicked.
bench_check_panic() {
    if grep -q panicked "$TMP/rnetd.log" 2>/dev/null; then
        echo "rnetd panicked:" >&2
        cat "$TMP/rnetd.log" >&2
        exit 1
    fi
}

bench_cleanup() {
    # Not in a child that got a signal between its fork and its exec (it still has these traps).
    local me=$BASHPID
    [ "$me" = "$$" ] || return 0
    # A second Ctrl-C does not cut the cleanup short (every wait in it is bounded).
    trap '' INT TERM
    set +e
    local hook
    for hook in "${BENCH_HOOKS[@]}"; do "$hook"; done
    bench_stop "${BENCH_PIDS[@]}"
    bench_stop_rnetd
    bench_netns_del "${BENCH_NETNS[@]}"
    wait 2>/dev/null
    rm -rf "$TMP"
}
