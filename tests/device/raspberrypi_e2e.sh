#!/usr/bin/env bash
# End-to-end test of the Raspberry Pi path without a Raspberry Pi (`make test-device`):
#
#   1. on this x86 host, `edgecls deploy` builds a bundle for target raspberrypi4 (aarch64, Python 3.11)
#      around the Coral ImageNet MobileNetV2 (int8), with a manifest written from its label file and three
#      check images;
#   2. the bundle is installed in a pristine arm64 Debian bookworm root (Raspberry Pi OS's base: python3
#      and python3-venv only) under qemu-user, with networking off (`unshare -n`): install.sh checks the
#      bundle, builds the virtual environment from the bundled wheels and runs `edgecls doctor`;
#   3. `edgecls predict` on the shared ImageNet photos must give their known answers;
#   4. a second bundle (a stream service from camera 0) is refused by the doctor (no camera in an emulator),
#      activated with --force with the first kept as previous, then rolled back.
#
# Needs root (debootstrap, chroot, mounts, unshare) and, once, the Debian mirror for the root and PyPI for
# the wheels. Each run installs into a throw-away overlay on the pristine root. Timings under emulation
# mean nothing; answers do. Environment: DEVICE_ROOT (pristine root, built when missing), EDGECLS_ASSETS,
# PYTHON (the workstation's Python with edgecls' dependencies), QEMU_CPU (cortex-a72: the Pi 4's core).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
ASSETS=${EDGECLS_ASSETS:-$REPO/../shared}
DEVICE_ROOT=${DEVICE_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/edgecls/device-roots/bookworm-arm64}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
export QEMU_CPU=${QEMU_CPU:-cortex-a72}
PHOTOS=$ASSETS/images/imagenet-photos
MODEL=$ASSETS/models/coral/mobilenet_v2_1.0_224_quant.tflite
PREFIX=/opt/edgecls
START=$SECONDS

log() { printf '[device-e2e %4ds] %s\n' "$((SECONDS - START))" "$*" >&2; }
fail() { printf '[device-e2e] FAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (chroot, mounts, unshare)"
[ -f "$MODEL" ] || fail "test assets not found at $ASSETS (set EDGECLS_ASSETS)"
[ -x "$PYTHON" ] || fail "no Python at $PYTHON (set PYTHON, or run make test-device, which makes .venv)"

ensure_tools() {
    if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support debootstrap >/dev/null
    fi
    if ! grep -qs enabled /proc/sys/fs/binfmt_misc/qemu-aarch64; then
        [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        update-binfmts --enable qemu-aarch64
    fi
    grep -qs enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || fail "binfmt_misc cannot run aarch64 programs here"
}

ensure_root() {  # pristine: the bookworm base with python3 and python3-venv, nothing from PyPI
    [ -x "$DEVICE_ROOT/usr/bin/python3" ] && [ ! -e "$DEVICE_ROOT/debootstrap" ] && return 0
    log "building the pristine arm64 bookworm root in $DEVICE_ROOT (once; a few minutes)"
    mkdir -p "$DEVICE_ROOT"
    debootstrap --arch=arm64 --foreign --variant=minbase --include=python3,python3-venv bookworm "$DEVICE_ROOT" \
        http://deb.debian.org/debian >/dev/null
    cp /usr/bin/qemu-aarch64-static "$DEVICE_ROOT/usr/bin/"
    chroot "$DEVICE_ROOT" /debootstrap/debootstrap --second-stage >/dev/null
}

WORK=$(mktemp -d /tmp/edgecls-device-e2e.XXXXXX)
ROOT=$WORK/root
cleanup() {
    local m
    for m in dev sys proc ""; do ! mountpoint -q "$ROOT/$m" || umount "$ROOT/$m" || umount -l "$ROOT/$m" || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

mount_overlay() {
    mkdir -p "$WORK/upper" "$WORK/ovwork" "$ROOT"
    mount -t overlay overlay -o "lowerdir=$DEVICE_ROOT,upperdir=$WORK/upper,workdir=$WORK/ovwork" "$ROOT"
    mount -t proc proc "$ROOT/proc"
    mount --bind /sys "$ROOT/sys"   # onnxruntime's and XNNPACK's CPU probes read /sys
    mount --bind /dev "$ROOT/dev"
}

device() {  # run a shell command on the "device": arm64, emulated, no network
    unshare -n chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root QEMU_CPU="$QEMU_CPU" \
        /bin/sh -c "$1"
}

deploy() {  # deploy OUT [extra options]: the bundle, built on this host
    local out=$1
    shift
    PYTHONPATH=$REPO COLUMNS=120 "$PYTHON" -m edgecls.cli deploy "$MODEL" --target raspberrypi4 --out "$out" \
        --labels "$ASSETS/models/coral/imagenet_labels.txt" --check-image "$PHOTOS/parrot.jpg" \
        --check-image "$PHOTOS/grace_hopper.bmp" --check-image "$PHOTOS/cat.bmp" "$@"
}

ensure_tools
ensure_root
log "building bundle 1 for raspberrypi4 on $(uname -m)"
deploy "$WORK/bundle1.tar.gz"
log "building bundle 2 (a stream service from camera 0)"
deploy "$WORK/bundle2.tar.gz" --service stream --source 0
mount_overlay
mkdir -p "$ROOT/srv/photos" "$ROOT/srv/b1" "$ROOT/srv/b2"
cp "$PHOTOS"/*.jpg "$PHOTOS"/*.bmp "$ROOT/srv/photos/"
tar xzf "$WORK/bundle1.tar.gz" -C "$ROOT/srv/b1"
tar xzf "$WORK/bundle2.tar.gz" -C "$ROOT/srv/b2"

log "the device: $(device 'uname -m; python3 --version' | tr '\n' ' ')"
net=$(device "python3 -c 'import socket; socket.create_connection((\"151.101.0.223\", 443), timeout=5)' 2>&1 || true")
echo "$net" | grep -q "unreachable" || fail "the device root has network access: $net"
log "network is off inside: ${net##*: }"

log "install.sh of bundle 1 (no network)"
t0=$SECONDS
device "/srv/b1/edgecls-bundle-raspberrypi4/install.sh --prefix $PREFIX --unit-dir /srv/units" \
    || fail "install of bundle 1 failed"
log "bundle 1 installed and its doctor passed in $((SECONDS - t0)) s (emulated)"
log "installed size on the device: $(device "du -sh --apparent-size $PREFIX/releases/*/venv $PREFIX/releases/*/artifacts" | tr '\n\t' '; ')"

log "edgecls predict on the shared ImageNet photos"
ART=$PREFIX/current/artifacts/mobilenet_v2_1.0_224_quant.tflite
answers=$(device "$PREFIX/current/venv/bin/edgecls predict $ART /srv/photos/*.jpg /srv/photos/*.bmp -k 1")
echo "$answers"
for pair in parrot.jpg=macaw cat.bmp="Egyptian cat" grace_hopper.bmp="military uniform" hot_dog.jpg=hotdog \
            bird.bmp=chickadee dragonfly.bmp=dragonfly; do
    photo=${pair%%=*} expected=${pair#*=}
    echo "$answers" | grep -q "^/srv/photos/${photo}: ${expected}[ ,(]" || fail "$photo: expected $expected"
done
log "all 6 photos answered as expected"

log "a device report that comes home: edgecls bench on the device, report compare on the workstation"
device "$PREFIX/current/venv/bin/edgecls bench $ART --target raspberrypi4 --threads 2 --runs 3 --min-time 0 --warmup 1 \
    --warmup-time 0 --out /srv/bench" >"$WORK/bench-device.log" 2>&1 \
    || fail "edgecls bench on the device failed: $(tail -5 "$WORK/bench-device.log")"
PYTHONPATH=$REPO "$PYTHON" -m edgecls.cli bench "$ROOT$ART" --target raspberrypi4 --threads 2 --runs 20 --min-time 0.5 \
    --out "$WORK/bench-host" >"$WORK/bench-host.log" 2>&1 \
    || fail "edgecls bench on the workstation failed: $(tail -5 "$WORK/bench-host.log")"
PYTHONPATH=$REPO "$PYTHON" -m edgecls.cli report compare "$WORK/bench-host/bench.json" "$ROOT/srv/bench/bench.json" \
    | tee "$WORK/compare.md" | sed -n '/## Where each run/,$p'
if ! grep -q "| board |" "$WORK/compare.md" || ! grep -q "XNNPACK README" "$WORK/compare.md" \
        || ! grep -q "Run B ran under an emulator" "$WORK/compare.md"; then
    fail "report compare shows no device section, no published reference or no emulation flag"
fi

log "install.sh of bundle 2: the doctor needs camera 0, which the emulator lacks"
if device "/srv/b2/edgecls-bundle-raspberrypi4/install.sh --prefix $PREFIX --unit-dir /srv/units" 2>&1 \
        | tee "$WORK/install2.log"; then
    fail "bundle 2 installed although its camera is missing"
fi
grep -q "no camera" "$WORK/install2.log" || fail "the doctor did not name the missing camera"
id1=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["id"])' "$ROOT/srv/b1/edgecls-bundle-raspberrypi4/bundle.json")
[ "$(device "readlink $PREFIX/current")" = "releases/$id1" ] \
    || fail "a refused release became current"
log "refused as expected; bundle 1 is still current"

log "bundle 2 with --force, then --rollback"
device "/srv/b2/edgecls-bundle-raspberrypi4/install.sh --prefix $PREFIX --unit-dir /srv/units --force" >/dev/null 2>&1 \
    || fail "install --force of bundle 2 failed"
grep -q "ExecStart=$PREFIX/current/venv/bin/python -m edgecls.cli stream $ART 0 --target raspberrypi4" "$ROOT/srv/units/edgecls.service" \
    || fail "unexpected service unit: $(cat "$ROOT/srv/units/edgecls.service")"
device "ls -l $PREFIX; ls $PREFIX/releases"
device "$PREFIX/current/install.sh --rollback --prefix $PREFIX --unit-dir /srv/units"
[ "$(device "readlink $PREFIX/current")" = "releases/$id1" ] || fail "rollback did not bring bundle 1 back"
# Bundle 1 runs no service: the stream unit of bundle 2 goes with it (it would name bundle 2's camera).
[ ! -e "$ROOT/srv/units/edgecls.service" ] || fail "the rollback left bundle 2's unit: $(cat "$ROOT/srv/units/edgecls.service")"
device "$PREFIX/current/venv/bin/edgecls predict $ART /srv/photos/parrot.jpg -k 1" | grep -q macaw \
    || fail "bundle 1 does not answer after the rollback"
log "PASS: bundle built on x86, installed offline on emulated arm64, doctor passed, 6/6 answers, refused/forced/rolled back ($((SECONDS - START)) s)"
