#!/usr/bin/env bash
# Diagnosis of the sm_90 SWA forward: where the 128k time goes (L2 traffic, power, clocks).
set -uo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/sbops-out}; mkdir -p "$OUT/logs"
[[ -n "${SKIP_BUILD:-}" ]] || benchmarks/gpu_check.sh build || exit 1
cat > /tmp/fwd_loop.py <<'PY'
import sys, time, torch, sbops
from sbops._backends.cuda import sm90
T = int(sys.argv[1]); secs = float(sys.argv[2])
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(1, T, 28, 128, device="cuda", dtype=torch.bfloat16, generator=g)
k, v = (torch.randn(1, T, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
sm90.swa_fwd(q, k, v, 4096, None); torch.cuda.synchronize()
e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
t_end = time.time() + secs; n = 0; e0.record()
while time.time() < t_end:
    for _ in range(10): sm90.swa_fwd(q, k, v, 4096, None)
    n += 10; torch.cuda.synchronize()
e1.record(); torch.cuda.synchronize()
print(f"T={T}: {n} launches, mean {e0.elapsed_time(e1) / n:.3f} ms")
PY
echo "== power / clocks under a 6 s loop of the 128k forward"
nvidia-smi --query-gpu=clocks.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_event_reasons.active --format=csv -lms 250 > "$OUT/logs/smi.csv" &
SMI=$!
python3 /tmp/fwd_loop.py 131072 6
kill $SMI; sort "$OUT/logs/smi.csv" | uniq -c | sort -rn | head -12
echo "== ncu on one 32k launch (L2 / tensor / stalls)"
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
cat > /tmp/fwd_one.py <<'PY'
import torch, sbops
from sbops._backends.cuda import sm90
g = torch.Generator(device="cuda").manual_seed(0)
q = torch.randn(1, 32768, 28, 128, device="cuda", dtype=torch.bfloat16, generator=g)
k, v = (torch.randn(1, 32768, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(2))
for _ in range(3): sm90.swa_fwd(q, k, v, 4096, None)
torch.cuda.synchronize()
PY
for cc in base none; do
timeout 200 "$NCU" --clock-control $cc -k regex:swa_fwd_sm90_kernel -s 1 -c 1 --section SpeedOfLight --section MemoryWorkloadAnalysis \
  --metrics "lts__t_bytes.sum.per_second,lts__t_sectors_srcunit_tex.sum,lts__throughput.avg.pct_of_peak_sustained_elapsed,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,sm__cycles_elapsed.avg.per_second,l1tex__m_xbar2l1tex_read_bytes.sum.per_second,smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio,smsp__average_warps_issue_stalled_wait_per_issue_active.ratio,smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio" \
  python3 /tmp/fwd_one.py > "$OUT/logs/ncu_fwd_$cc.txt" 2>&1
echo "-- clock-control $cc"; grep -E "Duration|Throughput|Frequency|lts__|l1tex__m|pipe_tensor|stalled|cycles_elapsed|Hit Rate|Busy|Bandwidth" "$OUT/logs/ncu_fwd_$cc.txt" | head -40
done
