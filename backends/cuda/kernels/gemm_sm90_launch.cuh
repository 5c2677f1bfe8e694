// Host helpers of the Hopper GEMM's launches (int8_gemm_sm90.cu): the cluster-of-two launch configuration and how
// many persistent workers the device holds.  Included by that file only, inside its namespace (kThreads: its block).
#pragma once
// (std::atomic, std::min: the including file's <atomic> and <algorithm>)

// A launch of the kernel on a 1-D `grid` in clusters of two blocks, a unit's two row tiles (attr: the caller's
// storage).
cudaLaunchConfig_t pair_cluster_config(dim3 grid, int smem, cudaStream_t stream, cudaLaunchAttribute (&attr)[1]) {
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 2;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cfg;
}

// How many workers of this kernel (clusters of two with kMc, else blocks) with kSmem bytes of dynamic shared memory
// the current device holds at once: asked once per device, kMc and kSmem (the kernels of every epilogue and operand
// type share one function type and the same occupancy),
// after the kernel's shared-memory attribute is set; 0 where a cluster cannot be resident (MIG / MPS partitions, say).
template <bool kMc, int kSmem, typename Kern>
int resident_workers(Kern kernel) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cached[kMaxDevices] = {};  // 0 unknown, else the count + 1
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) return 0;
  int known = cached[dev].load(std::memory_order_relaxed);
  if (known == 0) {
    int n = 0;
    if (kMc) {
      cudaLaunchAttribute attr[1];
      const cudaLaunchConfig_t cfg = pair_cluster_config(dim3(2), kSmem, nullptr, attr);
      if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) n = -1;
    } else {
      int per_sm = 0, sms = 0;
      if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, kSmem) != cudaSuccess ||
          cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
        n = -1;
      else
        n = per_sm * sms;
    }
    if (n < 0) {
      cudaGetLastError();  // not sticky: clear it for the launch that follows
      n = 0;
    }
    known = n + 1;
    cached[dev].store(known, std::memory_order_relaxed);
  }
  return known - 1;
}
