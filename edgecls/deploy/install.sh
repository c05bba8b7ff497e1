#!/bin/sh
# Offline installer of an edgecls bundle, written by `edgecls deploy`. Needs Python with its venv
# module (Debian / Raspberry Pi OS: python3-venv), never the network.
#
#   sudo ./install.sh [--prefix /opt/edgecls] [--user NAME] [--unit-dir DIR] [--no-service]
#                     [--system-site-packages] [--force]
#   sudo /opt/edgecls/current/install.sh --rollback [--prefix /opt/edgecls] [--unit-dir DIR]
#
# First it checks the bundle, before it reads anything else from it: every file SHA256SUMS lists
# has that checksum, and the bundle holds no file SHA256SUMS does not list. bundle.json is then
# read as data (never run). Each bundle becomes PREFIX/releases/ID: a virtual environment with
# exactly the listed wheels, the artifacts and the service unit. PREFIX/current points at the
# active release, PREFIX/previous at the one before it, which --rollback brings back with its unit.
# A new release becomes current only after `edgecls doctor` passes on it (an artifact without a
# manifest fails it; --force activates the release anyway). --system-site-packages lets the
# environment see apt's python3-picamera2.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
PREFIX=/opt/edgecls
SERVICE_USER=${SUDO_USER:-$(id -un)}
UNIT_DIR=/etc/systemd/system
UNIT=edgecls.service   # the live unit in UNIT_DIR, and each release's own copy of its unit
WITH_SERVICE=1
SYSTEM_SITE=
FORCE=0
ROLLBACK=0
NL='
'

say() { printf 'edgecls install: %s\n' "$*"; }
die() { printf 'edgecls install: error: %s\n' "$*" >&2; exit 1; }
need_value() { [ "$1" -ge 2 ] || die "$2 needs a value (see --help)"; }

# The options: nothing of the bundle is read yet (--help prints this file's own header).
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) need_value $# "$1"; PREFIX=$2; shift 2 ;;
        --user) need_value $# "$1"; SERVICE_USER=$2; shift 2 ;;
        --unit-dir) need_value $# "$1"; UNIT_DIR=$2; shift 2 ;;
        --no-service) WITH_SERVICE=0; shift ;;
        --system-site-packages) SYSTEM_SITE=--system-site-packages; shift ;;
        --force) FORCE=1; shift ;;
        --rollback) ROLLBACK=1; shift ;;
        -h|--help) sed -n '1d; /^#/!q; s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# The bundle's check and its description, in one Python program (any Python 3: the bundle's own
# is known only from bundle.json). It prints KEY=value lines, no value holding a control character.
verify_and_read() {
    "$1" - "$HERE" <<'EOF'
import hashlib, json, os, re, stat, sys

here = sys.argv[1]

def fail(text):
    sys.exit("edgecls install: error: " + text)

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
listed = {}
try:
    with open(os.path.join(here, "SHA256SUMS"), encoding="utf-8") as f:
        lines = f.read().splitlines()
except (OSError, UnicodeError) as exc:
    fail(f"{here}/SHA256SUMS cannot be read ({exc}): copy the bundle again")
for number, line in enumerate(lines, 1):
    digest, _, name = line.partition("  ")
    parts = name.split("/")
    if (not re.fullmatch(r"[0-9a-f]{64}", digest) or not name or CONTROL.search(name) or "\\" in name
            or any(p in ("", ".", "..") for p in parts) or name in listed or name == "SHA256SUMS"):
        fail(f"SHA256SUMS line {number}: expected 'SHA256  relative/path', each file once: copy the bundle again")
    listed[name] = digest

# Every file here must be listed: a wheel or .pth added to wheels/, or a second bundle unpacked
# over this one, would otherwise be installed with it.
unlisted, odd = [], []
for root, dirs, files in os.walk(here):
    for name in sorted(dirs + files):
        path = os.path.join(root, name)
        rel = os.path.relpath(path, here).replace(os.sep, "/")
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            odd.append(rel)
        elif rel != "SHA256SUMS" and rel not in listed:
            unlisted.append(rel)
if odd:
    fail(f"not plain files (a bundle holds only files and folders): {', '.join(odd[:5])}: copy the bundle again")
if unlisted:
    fail(f"files that SHA256SUMS does not list: {', '.join(unlisted[:5])}{' ...' if len(unlisted) > 5 else ''}; "
         "unpack each bundle into a new, empty folder (never over another bundle) and add nothing to it")
bad = []
for name, digest in listed.items():
    h = hashlib.sha256()
    try:
        with open(os.path.join(here, *name.split("/")), "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        bad.append(f"{name}: {exc.strerror}")
        continue
    if h.hexdigest() != digest:
        bad.append(f"{name}: checksum differs")
if bad:
    fail("the bundle is damaged (copy it again): " + "; ".join(bad[:5]))

# bundle.json, checked as above: its values are data, each checked against what deploy writes.
WORD = r"[A-Za-z0-9][A-Za-z0-9._+-]*"
out = []

def field(key, value, pattern, where):
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        fail(f"bundle.json: {where} is {value!r}, expected text matching {pattern}: rebuild the bundle with edgecls deploy")
    out.append(f"{key}={value}")

try:
    if "bundle.json" not in listed:
        raise ValueError("SHA256SUMS does not list it")
    with open(os.path.join(here, "bundle.json"), encoding="utf-8") as f:
        doc = json.load(f)
    device, service = doc["device"], doc["service"]
    field("BUNDLE_ID", doc["id"], r"[0-9a-f]{12}", "id")
    field("EDGECLS_VERSION", doc["edgecls"], WORD, "edgecls")
    field("TARGET", doc["target"], WORD, "target")
    field("MACHINE", device["machine"], r"[a-z0-9_]+", "device.machine")
    field("PYTHON_VERSION", device["python"], r"3\.[0-9]+", "device.python")
    field("REQUIREMENT", doc["requirement"], r"edgecls\[[a-z,]+\]==" + WORD, "requirement")
    names = [a["name"] for a in doc["artifacts"]]
    for name in names:
        field("ARTIFACT", name, WORD, "an artifact's name")
        if f"artifacts/{name}" not in listed:
            fail(f"bundle.json names the artifact {name}, which SHA256SUMS does not list: rebuild the bundle")
    wheels = sorted(w["file"] for w in doc["wheels"])
    in_sums = sorted(n[len("wheels/"):] for n in listed if n.startswith("wheels/"))
    if wheels != in_sums or not wheels:
        fail("bundle.json and SHA256SUMS list different wheels: rebuild the bundle with edgecls deploy")
    for wheel in wheels:
        field("WHEEL", wheel, WORD + r"\.whl", "a wheel's file name")
    field("SERVICE_KIND", service["kind"] or "", r"(serve|stream)?", "service.kind")
    field("SERVICE_ARTIFACT", service["artifact"], "|".join(map(re.escape, names)), "service.artifact")
    field("CAMERA", service["camera"] or "", r"([0-9]+|/dev/video[0-9]+|picamera2(:[0-9]+)?)?", "service.camera")
    for arg in service["args"]:
        field("ARG", arg, r"[^\x00-\x1f\x7f]+", "a service argument")
except (OSError, ValueError, KeyError, TypeError) as exc:
    fail(f"bundle.json: unreadable ({exc}): copy the bundle again")
print("\n".join(out))
EOF
}

read_bundle() {  # verify the bundle, then set the variables from its description
    verify_py=$(command -v python3 || true)
    [ -n "$verify_py" ] || die "no python3 on PATH: install Python 3 (and its venv module)"
    fields=$(verify_and_read "$verify_py") || exit 1
    ARTIFACTS= WHEELS= SERVICE_ARGS=
    while IFS= read -r line; do
        value=${line#*=}
        case $line in
            BUNDLE_ID=*) BUNDLE_ID=$value ;;
            EDGECLS_VERSION=*) EDGECLS_VERSION=$value ;;
            TARGET=*) TARGET=$value ;;
            MACHINE=*) MACHINE=$value ;;
            PYTHON_VERSION=*) PYTHON_VERSION=$value ;;
            REQUIREMENT=*) REQUIREMENT=$value ;;
            SERVICE_KIND=*) SERVICE_KIND=$value ;;
            SERVICE_ARTIFACT=*) SERVICE_ARTIFACT=$value ;;
            CAMERA=*) CAMERA=$value ;;
            ARTIFACT=*) ARTIFACTS="${ARTIFACTS:+$ARTIFACTS }$value" ;;
            WHEEL=*) WHEELS="${WHEELS:+$WHEELS$NL}$value" ;;
            ARG=*) SERVICE_ARGS="${SERVICE_ARGS:+$SERVICE_ARGS$NL}$value" ;;
            *) die "unexpected line from the bundle check: $line" ;;
        esac
    done <<FIELDS
$fields
FIELDS
}

find_python() {
    PY=$(command -v "python$PYTHON_VERSION" || command -v python3 || true)
    [ -n "$PY" ] || die "no python3 on PATH: install Python $PYTHON_VERSION"
}

relink() {  # relink TARGET NAME: PREFIX/NAME -> TARGET, replaced in one rename
    ln -sfn "$1" "$PREFIX/.$2.new"
    "$PY" -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' "$PREFIX/.$2.new" "$PREFIX/$2"
}

systemd_here() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

restart_service() {
    [ -f "$UNIT_DIR/$UNIT" ] || return 0
    if systemd_here; then
        if systemctl daemon-reload && systemctl enable "$UNIT" >/dev/null 2>&1 && systemctl restart "$UNIT"; then
            say "service edgecls restarted (journalctl -u edgecls -f shows it)"
        else
            say "warning: systemctl could not start $UNIT (systemctl status edgecls tells why)"
        fi
    else
        say "systemd is not running here: the unit is in $UNIT_DIR/$UNIT; on the device run: sudo systemctl enable --now edgecls"
    fi
}

unit_dir_writable() {
    { mkdir -p "$UNIT_DIR" 2>/dev/null && [ -w "$UNIT_DIR" ]; } \
        || die "cannot write the service unit to $UNIT_DIR: run with sudo, or pass --no-service or --unit-dir DIR"
    UNIT_DIR=$(cd "$UNIT_DIR" && pwd)
}

switch_unit() {  # switch_unit NEW OLD: the live unit becomes release NEW's (OLD: the release left, or empty)
    [ "$WITH_SERVICE" = 1 ] || return 0
    live="$UNIT_DIR/$UNIT"
    if [ -f "$PREFIX/$1/$UNIT" ]; then
        cp "$PREFIX/$1/$UNIT" "$UNIT_DIR/.edgecls-new.service"
        mv -f "$UNIT_DIR/.edgecls-new.service" "$live"
        say "service unit written: $live (the unit of $1)"
    elif [ -f "$live" ] && [ -n "$2" ] && [ -f "$PREFIX/$2/$UNIT" ] && cmp -s "$live" "$PREFIX/$2/$UNIT"; then
        # The unit is the one this installer wrote for the release left: it would run that
        # release's artifact from NEW, which has none of that name.
        if systemd_here; then
            systemctl disable --now "$UNIT" >/dev/null 2>&1 || say "warning: systemctl could not stop $UNIT"
        fi
        if rm -f "$live"; then
            ! systemd_here || systemctl daemon-reload || true
            say "$1 runs no service: the unit of $2 was stopped and removed"
        else
            say "warning: $1 runs no service, and $live (the unit of $2) could not be removed"
        fi
    elif [ -f "$live" ]; then
        say "warning: $live was not written for $1 (an older installer, or by hand): check that it still fits (systemctl status edgecls)"
    fi
}

rollback() {
    [ -L "$PREFIX/previous" ] && [ -L "$PREFIX/current" ] || die "no previous release under $PREFIX to roll back to"
    cur=$(readlink "$PREFIX/current")
    prev=$(readlink "$PREFIX/previous")
    [ -f "$PREFIX/$prev/.built" ] || die "the previous release $PREFIX/$prev is incomplete; reinstall a bundle instead"
    PY="$PREFIX/$prev/venv/bin/python"
    if [ "$WITH_SERVICE" = 1 ] && { [ -f "$PREFIX/$prev/$UNIT" ] || [ -f "$UNIT_DIR/$UNIT" ]; }; then
        unit_dir_writable  # before anything changes: a release without its unit would not start
    fi
    relink "$prev" current
    relink "$cur" previous
    switch_unit "$prev" "$cur"
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
    say "installing $REQUIREMENT from the bundle's wheels (no network)"
    set --  # exactly the wheels SHA256SUMS lists, by path: no index, no folder to pick others from
    while IFS= read -r wheel; do set -- "$@" "$HERE/wheels/$wheel"; done <<WHEELS
$WHEELS
WHEELS
    # No pip configuration from the device (an extra index there would be ignored anyway).
    PIP_CONFIG_FILE=/dev/null "$REL/venv/bin/python" -m pip install --no-index \
        --disable-pip-version-check --no-cache-dir --no-warn-script-location -q \
        ${SYSTEM_SITE:+--ignore-installed} "$@"
    cp -R "$HERE/artifacts" "$REL/artifacts"
    cp "$HERE/bundle.json" "$HERE/install.sh" "$REL/"
    touch "$REL/.built"
}

doctor() {
    set -- --target "$TARGET"
    [ -z "$CAMERA" ] || set -- "$@" --camera "$CAMERA"
    for name in $ARTIFACTS; do set -- "$@" "$REL/artifacts/$name"; done  # names checked: no blanks, no wildcards
    say "running edgecls doctor on the new release"
    if "$REL/venv/bin/edgecls" doctor "$@"; then
        return 0
    fi
    if [ "$FORCE" = 1 ]; then
        say "warning: the doctor found problems (above); activating anyway (--force)"
        return 0
    fi
    die "the doctor found problems (above). The new release stays in $REL but is NOT active; $(readlink "$PREFIX/current" 2>/dev/null || echo 'no release') is still current. Fix them and run install.sh again, or --force"
}

prepare_unit() {  # the new release's own unit, REL/edgecls.service; the live one changes with the release
    rm -f "$REL/$UNIT"
    [ -n "$SERVICE_KIND" ] && [ "$WITH_SERVICE" = 1 ] || return 0
    id "$SERVICE_USER" >/dev/null 2>&1 || die "service user $SERVICE_USER does not exist (--user NAME)"
    [ "$SERVICE_USER" != root ] || say "warning: the service will run as root; --user NAME runs it as that user"
    set --  # the service's arguments, each one word as bundle.json gives it
    if [ -n "$SERVICE_ARGS" ]; then
        while IFS= read -r arg; do set -- "$@" "$arg"; done <<ARGS
$SERVICE_ARGS
ARGS
    fi
    # One unit definition for every edgecls service (edgecls/serve/unit.py), written by the release's own
    # edgecls, which first parses the arguments with the command the unit runs. The paths go through
    # PREFIX/current, which names this release once the unit is live.
    (cd "$PREFIX" && "$REL/venv/bin/edgecls" serve-unit --command "$SERVICE_KIND" --out "$REL/.edgecls-new.service" \
        --user "$SERVICE_USER" --python "$PREFIX/current/venv/bin/python" --description "edgecls $SERVICE_KIND ($TARGET)" \
        -- "$PREFIX/current/artifacts/$SERVICE_ARTIFACT" "$@" >/dev/null) \
        || die "could not write the service unit (above); $(readlink "$PREFIX/current" 2>/dev/null || echo 'no release') is still current"
    mv -f "$REL/.edgecls-new.service" "$REL/$UNIT"
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

if [ "$ROLLBACK" = 1 ]; then
    rollback
    exit 0
fi
read_bundle
find_python
check_machine
mkdir -p "$PREFIX/releases" 2>/dev/null && [ -w "$PREFIX/releases" ] \
    || die "cannot write to $PREFIX: run with sudo, or pass --prefix a folder you own"
PREFIX=$(cd "$PREFIX" && pwd)  # absolute: the service unit names paths under it
if [ -n "$SERVICE_KIND" ] && [ "$WITH_SERVICE" = 1 ]; then
    unit_dir_writable
fi
build_release
doctor
prepare_unit
old=$(readlink "$PREFIX/current" 2>/dev/null || true)
if [ "$old" != "releases/$BUNDLE_ID" ]; then
    relink "releases/$BUNDLE_ID" current
    [ -z "$old" ] || relink "$old" previous
fi
prune
[ "$old" != "releases/$BUNDLE_ID" ] || old=
switch_unit "releases/$BUNDLE_ID" "$old"
restart_service
say "installed: $PREFIX/current -> releases/$BUNDLE_ID (edgecls $EDGECLS_VERSION, target $TARGET)"
[ -z "$old" ] || say "previous release kept: $PREFIX/previous -> $old (roll back: sudo $PREFIX/current/install.sh --rollback --prefix $PREFIX)"
