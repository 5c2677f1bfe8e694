#!/usr/bin/env bash
# benchmarks/gpu/probes/dense_decode_sm90_variants.cu built with each set of knobs (in parallel), run one after another: ROWS (default "1 32"),
# VARIANTS (";"-separated nvcc -D flag sets; default: session 38's open questions, each without the L2 prefetch -- the
# shipped reduction, the reduction dropped (timing only), the cut first tile summed after the block's last unit, that
# with 64-row tiles, and clusters splitting each tile's K (64-row tiles, two blocks per SM; 2 and 4 blocks a cluster))
cd "$(dirname "$0")/../../.."
if [ -n "${VARIANTS:-}" ]; then IFS=';' read -ra V <<< "$VARIANTS"; else
P="-DSBOPS_DD90_L2_PREFETCH=0"
C="$P -DSBOPS_DD90_TILE_ROWS=64 -DSBOPS_DD90_BLOCKS_PER_SM=2"
V=("$P" "$P -DSBOPS_DD90_TIMING_NO_REDUCE=1" "$P -DSBOPS_DD90_DEFER_FIRST=1" "$P -DSBOPS_DD90_DEFER_FIRST=1 -DSBOPS_DD90_TILE_ROWS=64"
   "$C -DSBOPS_DD90_CLUSTER_K=2" "$C -DSBOPS_DD90_CLUSTER_K=4"); fi
for i in "${!V[@]}"; do
  rm -f /tmp/dd90_$i  # never run an older build
  nvcc -std=c++17 -arch=sm_90a -O3 --expt-relaxed-constexpr -Icsrc/include -Ibackends/cuda/kernels ${V[$i]} \
    benchmarks/gpu/probes/dense_decode_sm90_variants.cu -o /tmp/dd90_$i > /tmp/dd90_build_$i.log 2>&1 &
done
wait
for i in "${!V[@]}"; do
  [ -x /tmp/dd90_$i ] || { echo "variant $i: build failed"; tail -5 /tmp/dd90_build_$i.log; continue; }
  timeout 120 /tmp/dd90_$i ${ROWS:-1 32}
done
