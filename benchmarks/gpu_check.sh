#!/usr/bin/env bash
# Detection speed on a GPU, as device-tool calls (a machine with PyTorch and CUDA, no network).
#
#   bash benchmarks/gpu_check.sh prepare   # here: the wheels the GPU machine lacks (.whl/: monai, SimpleITK ~53 MB)
#                                          # and the real CT as one compressed file (.gpu_data/, ~42 MB); both ignored
#   bash benchmarks/gpu_check.sh run       # there: benchmarks/detect_speed.py --device cuda
#
# Together they exceed the 64 MiB a call carries, so it takes two calls on one warm machine: first carry .whl
# (and the detection bundle's models/model.pt, else random weights are timed): the wheels install into
# /tmp/site, two phantoms run twice (the first pass warms CUDA up) with AMP, the stitched volume on the CPU and
# the next scan read in a background thread, then a 512x512x800 chest at 0.6 mm alone (its peak GPU memory and
# host RSS). Then, while the machine is warm, carry .gpu_data (and model.pt): the same run adds the real CT.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=bundles/lung_nodule_ct_two_stage_detection/models/model.pt

case "${1:-}" in
prepare)
    PY=${PYTHON:-.venv/bin/python}
    # the GPU machine's image has torch, numpy, scipy, pandas; monai and SimpleITK travel as wheels
    mkdir -p .whl .gpu_data
    grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo '/.gpu_data/' >> .git/info/exclude
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "monai==$("$PY" -c 'import monai; print(monai.__version__)')" \
        "SimpleITK==$("$PY" -c 'import SimpleITK; print(SimpleITK.__version__)')"
    # ../shared does not travel: the real CT goes as one compressed MetaImage (same voxels and geometry)
    "$PY" - <<'EOF'
import SimpleITK as sitk
from monai_lung.io.sitk_reader import read_sitk_image
image = read_sitk_image("../shared/real_ct/LIDC-IDRI-0001/dicom")
sitk.WriteImage(image, ".gpu_data/LIDC-IDRI-0001.mha", useCompression=True)
EOF
    du -ch .whl/*.whl .gpu_data/* $( [ -f "$MODEL" ] && echo "$MODEL" ) | tail -n 20
    echo "call 1 carries: .whl $( [ -f "$MODEL" ] && echo "$MODEL" ); call 2 (warm machine): .gpu_data $( [ -f "$MODEL" ] && echo "$MODEL" )"
    ;;
run)
    PY=${PYTHON:-python3}  # the GPU image's Python, which holds PyTorch
    if compgen -G ".whl/*.whl" > /dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    opts=(--device cuda --no-real)
    [ -f "$MODEL" ] || opts+=(--random-weights)
    out=${OUT:-/tmp}
    if [ -f .gpu_data/LIDC-IDRI-0001.mha ]; then
        "$PY" benchmarks/detect_speed.py "${opts[@]}" --scan .gpu_data/LIDC-IDRI-0001.mha --phantoms 1 --repeat 2 \
            --json "$out/gpu_real.json" 2>&1 | tee "$out/gpu_real.txt"
    else
        "$PY" benchmarks/detect_speed.py "${opts[@]}" --phantoms 2 --repeat 2 --json "$out/gpu_speed.json" 2>&1 | tee "$out/gpu_speed.txt"
        "$PY" benchmarks/detect_speed.py "${opts[@]}" --phantoms 0 --slices 800 --slice-spacing 0.6 --no-windows \
            --json "$out/gpu_800.json" 2>&1 | tee "$out/gpu_800.txt"
    fi
    ;;
*)
    echo "usage: bash benchmarks/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
