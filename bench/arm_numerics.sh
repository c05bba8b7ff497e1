#!/usr/bin/env bash
# int8 numerics on Arm (aarch64) without Arm hardware: the same exported artifacts scored natively on
# this x86 host and inside an arm64 Debian bookworm root (Raspberry Pi OS base, Python 3.11) under
# qemu-user. Only the answers mean anything there; emulated timings do not.
#
#   bench/arm_numerics.sh [root|export|x86|arm64|report|all]     (default: all; each step skips finished work)
#
# Needs root (debootstrap, chroot, mounts) and the Debian mirror plus PyPI (through the host's pip) for the one-time root build
# (about 10-15 min). Environment: ARM_ROOT (/work/arm64root), ARM_WORK (/work/scratch/arm),
# MODEL (/work/scratch/fl224/model.keras), INV (/work/scratch/inv: images.npz with `images`, already
# preprocessed, and `targets`; keras.npy with the Keras fp32 probabilities), STRIDE (1: every image;
# N: every Nth image, for when emulation is too slow), ARM_CPUS, ARM_ARTIFACTS (below). Finished runs are
# kept as $ARM_WORK/scores_{x86,arm64_CORE}_SCHEME_sSTRIDE.npz and skipped: delete one to redo it.
set -euo pipefail

MAIN=$(cd "$(dirname "$0")/.." && pwd)
ARM_ROOT=${ARM_ROOT:-/work/arm64root}
WORK=${ARM_WORK:-/work/scratch/arm}
MODEL=${MODEL:-/work/scratch/fl224/model.keras}
INV=${INV:-/work/scratch/inv}
STRIDE=${STRIDE:-1}
# Emulated Arm cores (qemu-user -cpu): cortex-a72 = Raspberry Pi 4 (NEON, no dot product),
# cortex-a76 = Raspberry Pi 5 (NEON + dot product), max = every extension qemu has (dotprod, i8mm, SVE).
ARM_CPUS=${ARM_CPUS:-cortex-a72 cortex-a76 max}
ARM_CPU=max
HOST_PY=${HOST_PY:-$MAIN/.venv/bin/python}
EDGECLS=${EDGECLS:-$MAIN/.venv/bin/edgecls}
ARM_VENV=/opt/venv
ARM_PIP_SPECS=("numpy<2.3" "opencv-python-headless<4.13" "ai-edge-litert==2.1.0" "onnxruntime==1.23.2")
# Artifacts, relative to $WORK: the portable scheme (both formats, fp32 as a sanity check) and the arm scheme.
# ARM_ARTIFACTS (space-separated) narrows it: emulated fp32 is several times slower than int8.
ARTIFACTS=(portable/model_fp32.tflite portable/model_int8.tflite portable/model_fp32.onnx
           portable/model_int8.onnx arm/model_int8.onnx)
[ -z "${ARM_ARTIFACTS:-}" ] || read -r -a ARTIFACTS <<< "$ARM_ARTIFACTS"

log() { printf '[arm_numerics %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

binfmt_ready() { [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64; }

mount_root() {
    # Bind /work (read-only use) so the chroot sees the repo, the artifacts and the images at the same paths.
    # onnxruntime's cpuinfo aborts without /sys (it reads /sys/devices/system/cpu/possible).
    mkdir -p "$ARM_ROOT/work" "$ARM_ROOT/proc" "$ARM_ROOT/dev" "$ARM_ROOT/sys"
    mountpoint -q "$ARM_ROOT/proc" || mount -t proc proc "$ARM_ROOT/proc"
    mountpoint -q "$ARM_ROOT/sys" || mount --bind /sys "$ARM_ROOT/sys"
    mountpoint -q "$ARM_ROOT/dev" || mount --bind /dev "$ARM_ROOT/dev"
    mountpoint -q "$ARM_ROOT/work" || mount --bind /work "$ARM_ROOT/work"
    cp -f /etc/resolv.conf "$ARM_ROOT/etc/resolv.conf"
    trap umount_root EXIT
}

umount_root() {  # /work inside /work/arm64root/work is a loop for anything that walks /work: undo it on exit
    local m
    for m in work dev sys proc; do ! mountpoint -q "$ARM_ROOT/$m" || umount "$ARM_ROOT/$m" || true; done
}

in_root() {
    # With binfmt_misc's F flag the kernel runs arm64 binaries through qemu itself; without it, name qemu.
    # QEMU_CPU picks the emulated core; it must stay in the guest's environment, since every exec inside
    # the root starts a new qemu.
    local keep=(PATH=/usr/bin:/bin HOME=/root QEMU_CPU="$ARM_CPU")
    if binfmt_ready; then QEMU_CPU="$ARM_CPU" chroot "$ARM_ROOT" /usr/bin/env -i "${keep[@]}" "$@"
    else chroot "$ARM_ROOT" /usr/bin/qemu-aarch64-static -cpu "$ARM_CPU" /usr/bin/env -i "${keep[@]}" "$@"; fi
}

build_root() {
    command -v qemu-aarch64-static >/dev/null && command -v debootstrap >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap
    }
    if ! binfmt_ready; then
        [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
        update-binfmts --enable qemu-aarch64 || log "binfmt_misc unavailable: running through qemu-aarch64-static"
    fi
    if [ ! -x "$ARM_ROOT/usr/bin/apt-get" ] || [ -e "$ARM_ROOT/debootstrap" ]; then
        [ -e "$ARM_ROOT/debootstrap" ] || debootstrap --arch=arm64 --foreign bookworm "$ARM_ROOT" http://deb.debian.org/debian
        cp -f /usr/bin/qemu-aarch64-static "$ARM_ROOT/usr/bin/"
        if binfmt_ready; then chroot "$ARM_ROOT" /debootstrap/debootstrap --second-stage
        else chroot "$ARM_ROOT" /usr/bin/qemu-aarch64-static /bin/bash /debootstrap/debootstrap --second-stage; fi
    fi
    mount_root
    if [ ! -x "$ARM_ROOT/$ARM_VENV/bin/python" ]; then
        in_root /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip'
        in_root python3 -m venv "$ARM_VENV"
    fi
    if ! in_root "$ARM_VENV/bin/python" -c 'import numpy, cv2, onnxruntime, ai_edge_litert' 2>/dev/null; then
        # The host's pip fetches the aarch64 wheels (it has the host's certificates and index settings);
        # the root installs them offline.
        local plats=(--platform manylinux2014_aarch64)
        for g in 17 27 28 31 34 35 36; do plats+=(--platform "manylinux_2_${g}_aarch64"); done
        "$HOST_PY" -m pip download -q -d "$WORK/wheels" --only-binary=:all: "${plats[@]}" --python-version 3.11 \
            --implementation cp --abi cp311 --abi abi3 --abi none "${ARM_PIP_SPECS[@]}"
        in_root "$ARM_VENV/bin/pip" install -q --no-index --find-links "$WORK/wheels" "${ARM_PIP_SPECS[@]}"
    fi
    in_root "$ARM_VENV/bin/python" -c 'import platform, sys, numpy, cv2, onnxruntime as o, importlib.metadata as m
print(platform.machine(), sys.version.split()[0], "numpy", numpy.__version__, "cv2", cv2.__version__,
      "onnxruntime", o.__version__, "ai-edge-litert", m.version("ai-edge-litert"))' | tee "$WORK/arm_env.txt"
}

export_artifacts() {
    mkdir -p "$WORK"
    [ -s "$WORK/portable/export_summary.json" ] || "$EDGECLS" export "$MODEL" --format tflite,onnx --quant fp32,int8 \
        --int8-cpu portable --max-accuracy-drop 100 --out "$WORK/portable"
    [ -s "$WORK/arm/export_summary.json" ] || "$EDGECLS" export "$MODEL" --format onnx --quant int8 \
        --int8-cpu arm --max-accuracy-drop 100 --out "$WORK/arm"
}

snapshot_source() {
    # Both CPUs must run the same runtime code: copy it once (the checkout is shared and changes under us).
    if [ ! -d "$WORK/src/edgecls" ]; then
        mkdir -p "$WORK/src/bench"
        cp -a "$MAIN/edgecls" "$WORK/src/"
        cp -a "$MAIN/bench/int8_fidelity.py" "$WORK/src/bench/"
        { git -C "$MAIN" rev-parse HEAD; git -C "$MAIN" status --short -- edgecls bench/int8_fidelity.py; } > "$WORK/src/REVISION"
    fi
}

prepare_inputs() {
    mkdir -p "$WORK"
    snapshot_source
    [ -s "$WORK/images_s$STRIDE.npy" ] || "$HOST_PY" -c "import numpy as np
d = np.load('$INV/images.npz'); np.save('$WORK/images_s$STRIDE.npy', d['images'][::$STRIDE])"
}

scheme_artifacts() {  # the worker keys its output by file name, so each scheme folder runs separately
    for a in "${ARTIFACTS[@]}"; do [[ $a == "$1/"* ]] && echo "$WORK/$a"; done
}

run_x86() {
    prepare_inputs
    for scheme in portable arm; do
        local out="$WORK/scores_x86_${scheme}_s$STRIDE.npz"
        [ -s "$out" ] && continue
        log "x86 worker: $scheme"
        mapfile -t mine < <(scheme_artifacts "$scheme")
        [ ${#mine[@]} -gt 0 ] || continue
        PYTHONPATH="$WORK/src" "$HOST_PY" "$WORK/src/bench/int8_fidelity.py" --worker "$WORK/images_s$STRIDE.npy" "$out" "${mine[@]}"
    done
}

hwcaps() {  # the Arm features the emulated core reports to programs (what MLAS and XNNPACK dispatch on)
    in_root "$ARM_VENV/bin/python" -c 'import ctypes, platform
libc = ctypes.CDLL(None); libc.getauxval.restype = ctypes.c_ulong
h1, h2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
bits = {"asimd": h1 >> 1 & 1, "asimddp": h1 >> 20 & 1, "sve": h1 >> 22 & 1, "sve2": h2 >> 1 & 1, "i8mm": h2 >> 13 & 1}
print(platform.machine(), " ".join(k for k, v in bits.items() if v))'
}

run_arm64() {
    prepare_inputs
    mount_root
    for ARM_CPU in $ARM_CPUS; do
        hwcaps > "$WORK/hwcap_$ARM_CPU.txt"
        for scheme in portable arm; do
            local out="$WORK/scores_arm64_${ARM_CPU}_${scheme}_s$STRIDE.npz" t0=$SECONDS
            [ -s "$out" ] && continue
            log "arm64 worker (qemu-user -cpu $ARM_CPU, $(cat "$WORK/hwcap_$ARM_CPU.txt")): $scheme"
            mapfile -t mine < <(scheme_artifacts "$scheme")
        [ ${#mine[@]} -gt 0 ] || continue
            # cpuinfo cannot parse qemu's view of the CPU and says so at every start: noise, filtered.
            in_root PYTHONPATH="$WORK/src" "$ARM_VENV/bin/python" "$WORK/src/bench/int8_fidelity.py" --worker \
                "$WORK/images_s$STRIDE.npy" "$out" "${mine[@]}" 2> >(grep -v cpuinfo >&2)
            log "arm64 worker $ARM_CPU $scheme: $((SECONDS - t0)) s (emulated: not a timing)"
        done
    done
}

report() {  # one row per (artifact, emulated core, image subset) that has both an x86 and an arm64 run
    "$HOST_PY" - "$WORK" "$INV" <<'EOF'
import re
import sys
from pathlib import Path

import numpy as np

work, inv = Path(sys.argv[1]), Path(sys.argv[2])
d = np.load(inv / "images.npz")
all_targets, all_keras = d["targets"], np.load(inv / "keras.npy")
print("| artifact | Arm core (HWCAPs) | images | accuracy x86 / arm64 | agreement with Keras x86 / arm64 "
      "| agreement x86 vs arm64 | max abs dp x86 vs arm64 |")
print("|---|---|---|---|---|---|---|")
runs = []
for f in work.glob("scores_arm64_*_s*.npz"):
    cpu, scheme, stride = re.fullmatch(r"scores_arm64_(.+)_(portable|arm)_s(\d+)\.npz", f.name).groups()
    runs.append((scheme != "portable", cpu, int(stride), scheme, f))
for _, cpu, stride, scheme, f in sorted(runs, key=lambda r: (r[0], r[2], r[1])):
    x86, arm = np.load(work / f"scores_x86_{scheme}_s{stride}.npz"), np.load(f)
    targets, keras = all_targets[::stride], all_keras[::stride]
    hw = work / f"hwcap_{cpu}.txt"
    hw = " ".join(hw.read_text().split()[1:]) if hw.exists() else "?"
    for name in [n for n in x86.files if n in arm.files]:
        a, b = x86[name], arm[name]
        acc = lambda p: np.mean(p.argmax(1) == targets)
        agree = lambda p, q: np.mean(p.argmax(1) == q.argmax(1))
        print(f"| {scheme}/{name} | {cpu} ({hw}) | {len(targets)} | {acc(a):.3f} / {acc(b):.3f} | "
              f"{agree(a, keras):.3f} / {agree(b, keras):.3f} | {agree(a, b):.3f} "
              f"({int(np.sum(a.argmax(1) != b.argmax(1)))} differ) | {np.abs(a - b).max():.4f} |")
EOF
}

case "${1:-all}" in
    root) build_root ;;
    export) export_artifacts ;;
    x86) run_x86 ;;
    arm64) run_arm64 ;;  # e.g. STRIDE=2 ARM_CPUS=max bench/arm_numerics.sh arm64: every other image, one core
    report) report ;;
    all) build_root; export_artifacts; run_x86; run_arm64; report ;;
    *) echo "usage: $0 [root|export|x86|arm64|report|all]" >&2; exit 2 ;;
esac
