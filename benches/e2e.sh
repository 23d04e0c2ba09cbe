#!/usr/bin/env bash
# e2e.sh — end-to-end benchmark of `imgb build` against buildah and Docker's BuildKit.
#
# In one run it times, with hyperfine, on the cases in ../shared/bench/cases:
#   cold build (a, b, c), no-change rebuild (a, b, c), one-file-change rebuild (d),
#   export of the built images b and c,
# for imgb (here) and for the peers (../shared/bench/peers.sh, whose results.tsv is parsed),
# then prints a table of medians with the ratios imgb/BuildKit and imgb/buildah.
#
# Scenario definitions follow peers.sh:
#   cold            imgb: a fresh --root before each run (the base image is loaded, untimed);
#                   buildah: --no-cache; BuildKit: `docker builder prune -af` before each run
#   cached          the same build again, after 1 warm-up run
#   one-file-change touch-one.sh rewrites one small file of case c before each run (1 warm-up)
#   export          imgb `save -o type=oci,dest=F` vs `buildah push oci-archive:` (gzip) and
#                   `docker save`
#
# Usage (as root, from anywhere): benches/e2e.sh
# Knobs (environment):
#   RUNS=3            timed runs per measurement (RUNS=1 for a quick pass)
#   PEERS="buildah buildkit"  peers to run (empty: imgb only)
#   SKIP_SETUP=1      do not run ../shared/bench/setup-peers.sh first
#   SKIP_CARGO=1      do not run `cargo build --release` (use IMGB as is)
#   IMGB=PATH         the imgb binary (default: target/release/imgb of this repository)
#   RESULTS_OUT=FILE  also write the combined results (tsv) there
#   KEEP_WORK=1       keep the scratch directory
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$REPO/../shared/bench"
if [ ! -x "$BENCH/peers.sh" ] || [ ! -d "$BENCH/cases" ]; then
  echo "error: the shared benchmark kit is missing: expected $BENCH/peers.sh and $BENCH/cases" >&2
  echo "hint: e2e.sh reads the cases and the peer scripts from ../shared/bench next to the repository" >&2
  exit 1
fi
BENCH="$(cd "$BENCH" && pwd)"
CASES_DIR="$BENCH/cases"
export RUNS="${RUNS:-3}"
PEERS="${PEERS-buildah buildkit}"
IMGB="${IMGB:-$REPO/target/release/imgb}"
BASE=localhost/bench-busybox:latest

for tool in hyperfine buildah; do
  command -v "$tool" >/dev/null || [ -z "${SKIP_SETUP:-}" ] \
    || { echo "error: $tool not found; run without SKIP_SETUP" >&2; exit 1; }
done

if [ -z "${SKIP_SETUP:-}" ]; then
  echo ">> setting up the peers (../shared/bench/setup-peers.sh)" >&2
  "$BENCH/setup-peers.sh" >&2
fi
if [ -z "${SKIP_CARGO:-}" ]; then
  echo ">> cargo build --release" >&2
  (cd "$REPO" && cargo build --release -q)
fi
[ -x "$IMGB" ] || { echo "error: imgb binary not found at $IMGB" >&2; exit 1; }

WORK="$(mktemp -d)"
RESULTS="$WORK/results.tsv"
: > "$RESULTS"

cleanup() {
  set +e
  # imgb's runner mounts nothing that outlives a build, but never rm -rf through a mount.
  grep -o " $WORK/[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
  if [ -z "${KEEP_WORK:-}" ]; then rm -rf "$WORK"; else echo "work dir kept: $WORK" >&2; fi
}
trap cleanup EXIT

# hf PEER CASE SCENARIO [hyperfine args...] -- command
# Appends "peer case scenario median min max" to $RESULTS (the row format of peers.sh).
hf() {
  local peer="$1" cse="$2" scen="$3"; shift 3
  local log="$WORK/hf-$peer-$cse-$scen"
  echo ">> [$peer] $cse / $scen" >&2
  if hyperfine --style basic --runs "$RUNS" --export-csv "$log.csv" -n "$peer-$cse-$scen" "$@" >"$log.log" 2>&1; then
    # CSV columns: command,mean,stddev,median,user,system,min,max
    tail -n1 "$log.csv" | awk -F, -v p="$peer" -v c="$cse" -v s="$scen" \
      '{printf "%s\t%s\t%s\t%.3f\t%.3f\t%.3f\n", p, c, s, $(NF-4), $(NF-1), $NF}' >> "$RESULTS"
  else
    echo "   FAILED:" >&2; tail -n 15 "$log.log" >&2
    printf '%s\t%s\t%s\tFAIL\t-\t-\n' "$peer" "$cse" "$scen" >> "$RESULTS"
  fi
}

# ---------------------------------------------------------------------------
# imgb
# ---------------------------------------------------------------------------
echo ">> generating the big context (cases c/d) in $WORK/ctx-c" >&2
"$CASES_DIR/c-bigctx/gen-context.sh" "$WORK/ctx-c"
TOUCH="$CASES_DIR/c-bigctx/touch-one.sh"

buildah inspect --type image "$BASE" >/dev/null \
  || { echo "error: missing $BASE in buildah's store: run $BENCH/setup-peers.sh" >&2; exit 1; }
buildah push -q "$BASE" "docker-archive:$WORK/base.tar:$BASE"

ROOT="$WORK/imgb-root"
FRESH_ROOT="rm -rf $ROOT && $IMGB --root $ROOT load -q -i $WORK/base.tar"
IB="$IMGB --root $ROOT build --progress quiet"
eval "$FRESH_ROOT"

for cse in a b c; do
  case "$cse" in a) ctx="$CASES_DIR/a-trivial" ;; b) ctx="$CASES_DIR/b-multistage" ;; c) ctx="$WORK/ctx-c" ;; esac
  hf imgb "$cse" cold --prepare "$FRESH_ROOT" -- "$IB -t bench-$cse $ctx"
  eval "$FRESH_ROOT"
  hf imgb "$cse" cached --warmup 1 -- "$IB -t bench-$cse $ctx"
done
hf imgb d one-file-change --warmup 1 --prepare "$TOUCH $WORK/ctx-c" -- "$IB -t bench-c $WORK/ctx-c"

$IB -t bench-b "$CASES_DIR/b-multistage" >/dev/null
$IB -t bench-c "$WORK/ctx-c" >/dev/null
for img in b c; do
  out="$WORK/imgb-out-$img.tar"
  hf imgb "export-$img" oci --prepare "rm -f $out" -- "$IMGB --root $ROOT save bench-$img -o type=oci,dest=$out"
  printf 'size\texport-%s\timgb-oci\t%s MiB\t-\t-\n' "$img" "$(du -m "$out" | cut -f1)" >> "$RESULTS"
  rm -f "$out"
done
rm -rf "$ROOT"

# Floor of case b: its three stages are identical, so imgb and BuildKit both run that RUN once;
# its command alone, run on the host with busybox's applets, bounds what any builder can reach.
mkdir -p "$WORK/busybox-bin" && busybox --install -s "$WORK/busybox-bin"
sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$CASES_DIR/b-multistage/Dockerfile" \
  | awk '/^RUN /{ sub(/^RUN /, ""); print; exit }' | sed "s#/out#$WORK/floor-out#g" > "$WORK/floor-b.sh"
hf bare b cold --prepare "rm -rf $WORK/floor-out" -- "env PATH=$WORK/busybox-bin busybox sh -e $WORK/floor-b.sh"

# ---------------------------------------------------------------------------
# Peers: peers.sh with the same RUNS, its results.tsv appended to ours
# ---------------------------------------------------------------------------
if [ -n "$PEERS" ]; then
  echo ">> peers: $BENCH/peers.sh (PEERS=\"$PEERS\" RUNS=$RUNS)" >&2
  PEERS="$PEERS" RESULTS_OUT="$WORK/peers.tsv" "$BENCH/peers.sh" >"$WORK/peers.log" 2>&1 \
    || { echo "error: peers.sh failed:" >&2; tail -n 30 "$WORK/peers.log" >&2; exit 1; }
  cat "$WORK/peers.tsv" >> "$RESULTS"
fi

# ---------------------------------------------------------------------------
# Table: one row per case/scenario; export rows compare imgb's OCI tar with
# buildah's gzip oci-archive and `docker save`.
# ---------------------------------------------------------------------------
echo
echo "imgb e2e benchmark, $(date -u '+%Y-%m-%d %H:%M UTC'), RUNS=$RUNS, $(nproc) cores; median seconds (min-max)"
awk -F'\t' '
  function peer_scen(peer, scen) {
    if (scen == "oci" && peer == "buildah") return "oci-archive-gzip"
    if (scen == "oci" && peer == "buildkit") return "docker-save"
    return scen
  }
  function cell(peer, key,   k) {
    k = peer SUBSEP key
    if (!(k in med)) return "-"
    if (med[k] == "FAIL") return "FAIL"
    return sprintf("%s (%s-%s)", med[k], lo[k], hi[k])
  }
  function ratio(peer, c, s,   a, b) {
    a = SUBSEP c SUBSEP s; b = SUBSEP c SUBSEP peer_scen(peer, s)
    if (!(("imgb" a) in med) || !((peer b) in med)) return "-"
    if (med["imgb" a] == "FAIL" || med[peer b] == "FAIL" || med[peer b] + 0 == 0) return "-"
    return sprintf("%.3f", med["imgb" a] / med[peer b])
  }
  $1 == "size" { next }
  {
    k = $1 SUBSEP $2 SUBSEP $3
    med[k] = $4; lo[k] = $5; hi[k] = $6
    if ($1 == "imgb") order[++n] = $2 SUBSEP $3
  }
  END {
    printf "| case | scenario | imgb | BuildKit | buildah | imgb/BuildKit | imgb/buildah |\n"
    printf "| --- | --- | --- | --- | --- | --- | --- |\n"
    for (i = 1; i <= n; i++) {
      split(order[i], cs, SUBSEP); c = cs[1]; s = cs[2]
      printf "| %s | %s | %s | %s | %s | %s | %s |\n", c, s, cell("imgb", order[i]),
        cell("buildkit", c SUBSEP peer_scen("buildkit", s)),
        cell("buildah", c SUBSEP peer_scen("buildah", s)),
        ratio("buildkit", c, s), ratio("buildah", c, s)
    }
  }
' "$RESULTS"
awk -F'\t' '
  { med[$1 SUBSEP $2 SUBSEP $3] = $4 }
  END {
    floor = med["bare" SUBSEP "b" SUBSEP "cold"]
    if (floor + 0 == 0) exit
    printf "\ncase b floor (one stage'"'"'s RUN command alone, on the host): %s s;", floor
    printf " imgb/floor %.3f, BuildKit/floor %.3f\n", med["imgb" SUBSEP "b" SUBSEP "cold"] / floor,
      med["buildkit" SUBSEP "b" SUBSEP "cold"] / floor
  }
' "$RESULTS"
echo
echo "export file sizes:"
awk -F'\t' '$1 == "size" { printf "  %s %s: %s\n", $2, $3, $4 }' "$RESULTS" | sort
if [ -n "${RESULTS_OUT:-}" ]; then cp "$RESULTS" "$RESULTS_OUT"; fi
