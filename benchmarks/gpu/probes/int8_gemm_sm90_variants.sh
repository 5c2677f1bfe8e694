#!/usr/bin/env bash
# Where the Hopper int8 GEMM's time goes at short K (session 39): backends/cuda/kernels/int8_gemm_sm90.cu copied with one
# sed edit per variant, each built with int8_gemm_sm90_variants.cu (in parallel) and run one after another (M: $M,
# default 16384).  Variants: as shipped (the epilogue through shared memory and TMA stores since session 39); the stores
# from registers (session 31's epilogue); those stores dropped (so the epilogue's arithmetic too: timing only, y
# unwritten); the stores from registers with a ring of 3 stages; of 2; MMA warpgroup 1 starting 1 / 2 / 3 stages after
# warpgroup 0 (kWgLag, session 40; their column parameters read from global memory, as in variant 8); the epilogue's
# column parameters read from global memory per 8-column block (session 40's, before kStagedColParams, session 41);
# a ring of 3 stages with 4 store buffers a warpgroup (kEpiBufs: a whole item staged without waiting for the
# stores to drain), and the same ring with the shipped 2.
# Needs no install.
cd "$(dirname "$0")/../../.."
SRC=backends/cuda/kernels/int8_gemm_sm90.cu
REG="s/constexpr bool kTmaStoreEpilogue = true;/constexpr bool kTmaStoreEpilogue = false;/"
NAMES=("shipped" "stores from registers" "no epilogue stores (timing only)" "stores from registers, 3 stages"
       "stores from registers, 2 stages" "MMA warpgroup 1 starts 1 stage late" "2 stages late" "3 stages late"
       "column parameters from global memory (session 40)" "3 stages, 4 store buffers a warpgroup"
       "3 stages, 2 store buffers")
EDITS=("" "$REG" "$REG; s/if (r0 < M)$/if (false)/; s/if (r1 < M)$/if (false)/"
       "$REG; s/constexpr int kStages = 4;/constexpr int kStages = 3;/"
       "$REG; s/constexpr int kStages = 4;/constexpr int kStages = 2;/"
       "s/constexpr int kWgLag = 0;/constexpr int kWgLag = 1;/" "s/constexpr int kWgLag = 0;/constexpr int kWgLag = 2;/"
       "s/constexpr int kWgLag = 0;/constexpr int kWgLag = 3;/"
       "s/constexpr bool kStagedColParams = true;/constexpr bool kStagedColParams = false;/"
       "s/constexpr int kStages = 4;/constexpr int kStages = 3;/; s/constexpr int kEpiBufs = 2;/constexpr int kEpiBufs = 4;/"
       "s/constexpr int kStages = 4;/constexpr int kStages = 3;/")
# VARIANTS: the variants to build and run (indices, default all), e.g. VARIANTS="0 5 6 7"
SEL=(${VARIANTS:-${!EDITS[@]}})
for i in "${SEL[@]}"; do
  rm -f /tmp/i8v_$i /tmp/i8v_$i.cu
  sed "${EDITS[$i]}" $SRC > /tmp/i8v_$i.cu
  [ -z "${EDITS[$i]}" ] || ! cmp -s $SRC /tmp/i8v_$i.cu || { echo "variant $i: the edit matched nothing"; continue; }
  nvcc -std=c++17 -arch=sm_90a -O3 --expt-relaxed-constexpr -Icsrc/include -Ibackends/cuda/kernels \
    /tmp/i8v_$i.cu benchmarks/gpu/probes/int8_gemm_sm90_variants.cu -o /tmp/i8v_$i > /tmp/i8v_build_$i.log 2>&1 &
done
wait
for i in "${SEL[@]}"; do
  [ -x /tmp/i8v_$i ] || { echo "variant $i: build failed"; tail -5 /tmp/i8v_build_$i.log; continue; }
  echo "variant $i: ${NAMES[$i]}"
  timeout 120 /tmp/i8v_$i ${M:-16384}
done
