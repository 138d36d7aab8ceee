#!/bin/bash
# One device run for the wgpu backend of idunno-models: GPU facts, Vulkan loader, then the bench
# on wgpu and on the CPU of the same machine (each in its own process, each under a timeout).
# As used for docs/benchmarks.md: from the repository root, with
#   .gpu/bench.gz  the stripped, gzipped `bench` example built with
#                  `cargo build -p idunno-models --release --features wgpu --example bench`
#   .gl/*.deb      libvulkan1 (+ glvnd libraries) where the machine has no Vulkan loader
#   OUT            a directory for run.log and table.md
# run `cp scripts/models_gpu_bench.sh .gpu/run.sh && bash .gpu/run.sh`.
cd "$(dirname "$0")/.." || exit 1
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
exec > >(tee "$OUT/run.log") 2>&1
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
nproc; grep -m1 'model name' /proc/cpuinfo
echo "--- vulkan loader:"; ldconfig -p | grep -i libvulkan
echo "--- ICDs:"; ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/nvidia/share/vulkan/icd.d 2>&1
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ] && ! ls /usr/share/vulkan/icd.d/nvidia* /etc/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  echo "VK_DRIVER_FILES=$VK_DRIVER_FILES"
fi
export IDUNNO_MODELS_WEIGHTS_DIR=$PWD/models/weights
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
MACHINE="$GPU + $(nproc) CPU cores (device machine)"
gunzip -c .gpu/bench.gz > /tmp/bench && chmod +x /tmp/bench || exit 1
B=/tmp/bench
ARGS=(--seconds "${SECONDS_PER_REPEAT:-2}" --repeats 3 --testdata models/testdata --machine "$MACHINE" --out "$OUT/table.md")
echo "=== wgpu"; date -u +%T
timeout "${WGPU_TIMEOUT:-240}" $B --device wgpu "${ARGS[@]}"; echo "wgpu exit: $?"
echo "=== cpu"; date -u +%T
timeout "${CPU_TIMEOUT:-150}" $B --device cpu "${ARGS[@]}"; echo "cpu exit: $?"
date -u +%T
echo "=== table"; cat "$OUT/table.md"
