#!/usr/bin/env bash
# Runs `xtask gpu-check` on a machine with an NVIDIA GPU, from the repository root, with the
# binaries `cargo xtask cuda-build` left in target/cuda/bin. Such machines have the driver
# (libcuda) but may have no CUDA toolkit: the CUDA 13 libraries (cuBLAS, NVRTC, cuRAND, cuDNN)
# are taken from the installed PyTorch's wheels, which also time PyTorch on the same GPU.
# Usage: xtask/gpu/gpu-check.sh [PYTHON] [gpu-check options...]
set -euo pipefail
python="${1:-python3}"
shift || true
bin="target/cuda/bin/xtask"
[ -x "$bin" ] || { echo "error: $bin missing: run cargo xtask cuda-build first" >&2; exit 2; }
libs="$("$python" - <<'PY'
import os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()]
found = []
for root in roots:
    for sub in ("nvidia/cu13/lib", "nvidia/cudnn/lib", "nvidia/cublas/lib", "nvidia/cuda_nvrtc/lib",
                "nvidia/curand/lib", "nvidia/cuda_runtime/lib"):
        path = os.path.join(root, sub)
        if os.path.isdir(path):
            found.append(path)
print(":".join(found))
PY
)"
[ -n "$libs" ] || { echo "error: no NVIDIA CUDA 13 libraries in $python's site-packages" >&2; exit 2; }
torch=()
if "$python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    torch=(--torch "$python")
fi
echo "CUDA libraries: $libs"
LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$bin" gpu-check "${torch[@]}" "$@"
