# Sourced by the load and profiling scripts: start a latch node on ephemeral ports and
# find it. Not a script of its own.

# latch_serve OUT ERR BIN [VAR=value ...]: starts `BIN serve` in the background, on
# ephemeral ports (main and metrics listener), with the per-client rate limits off (the
# tools measure latch, not its limits) and then the given environment, which wins. Its
# stdout goes to OUT, stderr to ERR; sets $latch_pid.
latch_serve() {
    local out=$1 err=$2 bin=$3
    shift 3
    env LATCH_LISTEN=127.0.0.1:0 LATCH_METRICS__LISTEN=127.0.0.1:0 \
        LATCH_LIMITS__TOKEN_RATE=off LATCH_LIMITS__REVOKE_RATE=off "$@" \
        "$bin" serve >"$out" 2>"$err" &
    latch_pid=$!
}

# latch_url OUT [SECONDS]: prints the URL the node writing OUT announced, waiting up to
# SECONDS (default 30) for its announce line; fails, printing nothing, if none came.
latch_url() {
    local out=$1 tries=$((${2:-30} * 10)) url=""
    for _ in $(seq 1 "$tries"); do
        url=$(grep -o 'http://127.0.0.1:[0-9]*' "$out" 2>/dev/null | head -1 || true)
        [ -n "$url" ] && { echo "$url"; return 0; }
        sleep 0.1
    done
    return 1
}

# latch_ready URL [SECONDS]: waits up to SECONDS (default 10) until URL/readyz answers
# 200 (listening comes before ready: the first freshness proof); fails otherwise.
latch_ready() {
    local url=$1 tries=$((${2:-10} * 10))
    for _ in $(seq 1 "$tries"); do
        curl -fs "$url/readyz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}
