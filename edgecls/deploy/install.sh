#!/bin/sh
# Offline installer of an edgecls bundle, written by `edgecls deploy`. Needs Python with its venv
# module (Debian / Raspberry Pi OS: python3-venv), never the network.
#
#   sudo ./install.sh [--prefix /opt/edgecls] [--user NAME] [--unit-dir DIR] [--no-service]
#                     [--system-site-packages] [--force]
#   sudo /opt/edgecls/current/install.sh --rollback [--prefix /opt/edgecls]
#
# Each bundle becomes PREFIX/releases/ID: a virtual environment with the bundled wheels and the
# artifacts. PREFIX/current points at the active release, PREFIX/previous at the one before it,
# which --rollback brings back. A new release becomes current only after `edgecls doctor` passes
# on it (--force: anyway). --system-site-packages lets the environment see apt's python3-picamera2.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=/dev/null
. "$HERE/bundle.env"

PREFIX=/opt/edgecls
SERVICE_USER=${SUDO_USER:-$(id -un)}
UNIT_DIR=/etc/systemd/system
WITH_SERVICE=1
SYSTEM_SITE=
FORCE=0
ROLLBACK=0

say() { printf 'edgecls install: %s\n' "$*"; }
die() { printf 'edgecls install: error: %s\n' "$*" >&2; exit 1; }
need_value() { [ "$1" -ge 2 ] || die "$2 needs a value (see --help)"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) need_value $# "$1"; PREFIX=$2; shift 2 ;;
        --user) need_value $# "$1"; SERVICE_USER=$2; shift 2 ;;
        --unit-dir) need_value $# "$1"; UNIT_DIR=$2; shift 2 ;;
        --no-service) WITH_SERVICE=0; shift ;;
        --system-site-packages) SYSTEM_SITE=--system-site-packages; shift ;;
        --force) FORCE=1; shift ;;
        --rollback) ROLLBACK=1; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

find_python() {
    PY=$(command -v "python$PYTHON_VERSION" || command -v python3 || true)
    [ -n "$PY" ] || die "no python3 on PATH: install Python $PYTHON_VERSION"
}

relink() {  # relink TARGET NAME: PREFIX/NAME -> TARGET, replaced in one rename
    ln -sfn "$1" "$PREFIX/.$2.new"
    "$PY" -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' "$PREFIX/.$2.new" "$PREFIX/$2"
}

restart_service() {
    [ -f "$UNIT_DIR/edgecls.service" ] || return 0
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl daemon-reload && systemctl enable edgecls.service >/dev/null 2>&1 \
                && systemctl restart edgecls.service; then
            say "service edgecls restarted (journalctl -u edgecls -f shows it)"
        else
            say "warning: systemctl could not start edgecls.service (systemctl status edgecls tells why)"
        fi
    else
        say "systemd is not running here: the unit is in $UNIT_DIR/edgecls.service; on the device run: sudo systemctl enable --now edgecls"
    fi
}

rollback() {
    [ -L "$PREFIX/previous" ] && [ -L "$PREFIX/current" ] || die "no previous release under $PREFIX to roll back to"
    cur=$(readlink "$PREFIX/current")
    prev=$(readlink "$PREFIX/previous")
    [ -f "$PREFIX/$prev/.built" ] || die "the previous release $PREFIX/$prev is incomplete; reinstall a bundle instead"
    relink "$prev" current
    relink "$cur" previous
    restart_service
    say "rolled back: current is $prev; the release you left ($cur) is kept as previous"
}

check_machine() {
    machine=$(uname -m)
    [ "$machine" = "$MACHINE" ] || die "this bundle is for $MACHINE (target $TARGET) and this machine is $machine: build one for it with edgecls deploy --target (a 32-bit Raspberry Pi OS reports armv7l: install the 64-bit OS)"
    pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$pyver" = "$PYTHON_VERSION" ] || die "the bundled wheels are for Python $PYTHON_VERSION and $PY is Python $pyver: build a bundle with edgecls deploy --python-version $pyver"
    "$PY" -c 'import venv, ensurepip' 2>/dev/null || die "Python's venv module is missing: sudo apt install python3-venv (Debian, Raspberry Pi OS)"
}

verify_bundle() {
    (cd "$HERE" && "$PY" - <<'EOF'
import hashlib, sys
bad = []
for line in open("SHA256SUMS", encoding="utf-8"):
    digest, name = line.rstrip("\n").split("  ", 1)
    h = hashlib.sha256()
    try:
        with open(name, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        bad.append(f"{name}: {exc.strerror}")
        continue
    if h.hexdigest() != digest:
        bad.append(f"{name}: checksum differs")
if bad:
    sys.exit("edgecls install: error: the bundle is damaged (copy it again): " + "; ".join(bad[:5]))
EOF
    )
}

build_release() {
    REL="$PREFIX/releases/$BUNDLE_ID"
    if [ -f "$REL/.built" ]; then
        say "release $BUNDLE_ID is already installed in $REL"
        return 0
    fi
    rm -rf "$REL"
    mkdir -p "$REL"
    say "creating the virtual environment in $REL/venv"
    "$PY" -m venv $SYSTEM_SITE "$REL/venv"
    say "installing $REQUIREMENT from the bundle (no network)"
    # No pip configuration from the device (an extra index there would be ignored anyway).
    PIP_CONFIG_FILE=/dev/null "$REL/venv/bin/python" -m pip install --no-index --find-links "$HERE/wheels" \
        --disable-pip-version-check --no-cache-dir --no-warn-script-location -q \
        ${SYSTEM_SITE:+--ignore-installed} "$REQUIREMENT"
    cp -R "$HERE/artifacts" "$REL/artifacts"
    cp "$HERE/bundle.json" "$HERE/bundle.env" "$HERE/install.sh" "$REL/"
    touch "$REL/.built"
}

doctor() {
    set --
    for name in $ARTIFACTS; do set -- "$@" "$REL/artifacts/$name"; done
    say "running edgecls doctor on the new release"
    # shellcheck disable=SC2086
    if "$REL/venv/bin/edgecls" doctor --target "$TARGET" $DOCTOR_ARGS "$@"; then
        return 0
    fi
    if [ "$FORCE" = 1 ]; then
        say "warning: the doctor found problems (above); activating anyway (--force)"
        return 0
    fi
    die "the doctor found problems (above). The new release stays in $REL but is NOT active; $(readlink "$PREFIX/current" 2>/dev/null || echo 'no release') is still current. Fix them and run install.sh again, or --force"
}

# shellcheck disable=SC2120 # its positional parameters are the service's arguments, set from bundle.env
prepare_unit() {  # the new release's unit, beside the live one until the release is current
    [ -n "$SERVICE_KIND" ] && [ "$WITH_SERVICE" = 1 ] || return 0
    id "$SERVICE_USER" >/dev/null 2>&1 || die "service user $SERVICE_USER does not exist (--user NAME)"
    [ "$SERVICE_USER" != root ] || say "warning: the service will run as root; --user NAME runs it as that user"
    mkdir -p "$UNIT_DIR"
    eval "set -- $SERVICE_ARGS"
    # One unit definition for every edgecls service (edgecls/serve/unit.py), written by the release's own
    # edgecls, which first parses the arguments with the command the unit runs. The paths go through
    # PREFIX/current, so a rollback needs no new unit.
    (cd "$PREFIX" && "$REL/venv/bin/edgecls" serve-unit --command "$SERVICE_KIND" --out "$UNIT_DIR/.edgecls-new.service" \
        --user "$SERVICE_USER" --python "$PREFIX/current/venv/bin/python" --description "edgecls $SERVICE_KIND ($TARGET)" \
        -- "$PREFIX/current/artifacts/$SERVICE_ARTIFACT" "$@" >/dev/null) \
        || die "could not write the service unit (above); $(readlink "$PREFIX/current" 2>/dev/null || echo 'no release') is still current"
}

install_unit() {
    [ -n "$SERVICE_KIND" ] && [ "$WITH_SERVICE" = 1 ] || return 0
    mv -f "$UNIT_DIR/.edgecls-new.service" "$UNIT_DIR/edgecls.service"
    say "service unit written: $UNIT_DIR/edgecls.service (edgecls $SERVICE_KIND)"
}

prune() {  # keep the current and the previous release, nothing older
    keep_cur=$(readlink "$PREFIX/current" 2>/dev/null || true)
    keep_prev=$(readlink "$PREFIX/previous" 2>/dev/null || true)
    for rel in "$PREFIX"/releases/*; do
        [ -d "$rel" ] || continue
        name="releases/$(basename "$rel")"
        [ "$name" = "$keep_cur" ] || [ "$name" = "$keep_prev" ] || { rm -rf "$rel"; say "removed old release $name"; }
    done
}

find_python
if [ "$ROLLBACK" = 1 ]; then
    rollback
    exit 0
fi
check_machine
verify_bundle
mkdir -p "$PREFIX/releases" 2>/dev/null && [ -w "$PREFIX/releases" ] \
    || die "cannot write to $PREFIX: run with sudo, or pass --prefix a folder you own"
PREFIX=$(cd "$PREFIX" && pwd)  # absolute: the service unit names paths under it
if [ -n "$SERVICE_KIND" ] && [ "$WITH_SERVICE" = 1 ]; then
    { mkdir -p "$UNIT_DIR" 2>/dev/null && [ -w "$UNIT_DIR" ]; } \
        || die "cannot write the service unit to $UNIT_DIR: run with sudo, or pass --no-service or --unit-dir DIR"
    UNIT_DIR=$(cd "$UNIT_DIR" && pwd)
fi
build_release
doctor
# shellcheck disable=SC2119
prepare_unit
old=$(readlink "$PREFIX/current" 2>/dev/null || true)
if [ "$old" != "releases/$BUNDLE_ID" ]; then
    relink "releases/$BUNDLE_ID" current
    [ -z "$old" ] || relink "$old" previous
fi
prune
install_unit
restart_service
say "installed: $PREFIX/current -> releases/$BUNDLE_ID (edgecls $EDGECLS_VERSION, target $TARGET)"
[ -z "$old" ] || [ "$old" = "releases/$BUNDLE_ID" ] || say "previous release kept: $PREFIX/previous -> $old (roll back: sudo $PREFIX/current/install.sh --rollback --prefix $PREFIX)"
