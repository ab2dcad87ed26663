#!/usr/bin/env bash
# Build the trio-fwagent Debian package: a self-contained virtualenv in /opt/trio-fwagent,
# /usr/bin/trio-fwagent, the systemd unit, /etc/trio-fwagent/agent.toml as a conffile,
# /var/lib/trio-fwagent, and the example installers in /usr/share/trio-fwagent/installers.
#
# Usage: packaging/build-deb.sh [OPTIONS] [OUTPUT_DIR]
#   -o, --output DIR       where the .deb goes (default: dist/ in the project)
#   --wheel FILE           package this wheel instead of building one from the tree
#   --python PATH          the interpreter the package runs on (default /usr/bin/python3,
#                          Debian's; the package then Depends on that python3 minor version)
#   --constraint FILE      pip constraints file pinning the dependencies' versions
#                          (default: the project's constraints.txt, the tested versions)
#   --no-constraint        let pip pick the newest versions allowed by pyproject.toml
#   --revision N           Debian revision (default 1): VERSION-N
#   --keep-workdir         keep the staging directory (printed) for inspection
#   -h, --help
# Environment: BUILD_PYTHON (runs `build` and pip; default the project's .venv, else
# python3; needs pip >= 22.3), DEB_MAINTAINER, TMPDIR, and pip's own PIP_* variables
# (PIP_INDEX_URL, PIP_FIND_LINKS, PIP_NO_INDEX for offline builds).
# Needs: bash, dpkg-deb, python3 >= 3.11 with the venv module, network access to the
# package index for the dependencies. Works as root or not (dpkg-deb --root-owner-group).
# Prints the path of the .deb on stdout; progress goes to stderr.
#
# How the virtualenv is made relocatable-at-build-time (see packaging/README.md):
# a venv records absolute paths in three places: bin/* shebangs and activate scripts,
# pyvenv.cfg, and the source paths compiled into *.pyc files. We create it with the
# target interpreter inside the staging root, install with pip run *from outside* the
# venv (pip --python, so the venv ships without pip), rewrite the staging prefix to
# /opt/trio-fwagent in those text files, then byte-compile with compileall -s/-p so the
# .pyc files name /opt/trio-fwagent/... too. Finally we check that no file in the
# package mentions the staging directory, and fail the build if one does.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$(cd "$here/.." && pwd)"
prefix=/opt/trio-fwagent

out="$project/dist"
wheel=""
target_python=/usr/bin/python3
constraint=""
revision=1
keep=0

log() { printf '[build-deb] %s\n' "$*" >&2; }
die() { printf '[build-deb] error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        -o|--output) out="${2:?--output needs a directory}"; shift 2 ;;
        --wheel) wheel="${2:?--wheel needs a file}"; shift 2 ;;
        --python) target_python="${2:?--python needs an interpreter}"; shift 2 ;;
        --constraint) constraint="${2:?--constraint needs a file}"; shift 2 ;;
        --no-constraint) constraint=none; shift ;;
        --revision) revision="${2:?--revision needs a number}"; shift 2 ;;
        --keep-workdir) keep=1; shift ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option: $1 (try --help)" ;;
        *) out="$1"; shift ;;
    esac
done

if [ -z "${BUILD_PYTHON:-}" ]; then
    if [ -x "$project/.venv/bin/python" ]; then BUILD_PYTHON="$project/.venv/bin/python"
    else BUILD_PYTHON=python3; fi
fi

command -v dpkg-deb >/dev/null 2>&1 || die "dpkg-deb not found (apt-get install dpkg)"
[ -x "$target_python" ] || die "target interpreter $target_python not found (apt-get install python3)"
case "$target_python" in
    /*) ;;
    *) die "--python must be an absolute path (the venv links to it on the target)" ;;
esac
py_minor="$("$target_python" -c 'import sys; print(sys.version_info[1]) if sys.version_info[:2] >= (3, 11) and sys.version_info[0] == 3 else sys.exit(1)')" \
    || die "$target_python is older than Python 3.11"
"$BUILD_PYTHON" -c 'pass' 2>/dev/null || die "BUILD_PYTHON=$BUILD_PYTHON does not run"
"$BUILD_PYTHON" -c 'import sys; import pip; v = tuple(int(p) for p in pip.__version__.split(".")[:2]); sys.exit(v < (22, 3))' \
    2>/dev/null || die "BUILD_PYTHON=$BUILD_PYTHON needs pip >= 22.3 (for pip --python; apt-get install python3-pip)"

mkdir -p "$out"
out="$(cd "$out" && pwd)"
[ -z "$wheel" ] || wheel="$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")"
if [ "$constraint" = none ]; then
    constraint=""
elif [ -z "$constraint" ] && [ -f "$project/constraints.txt" ]; then
    constraint="$project/constraints.txt"
fi
if [ -n "$constraint" ]; then
    [ -f "$constraint" ] || die "constraints file $constraint does not exist"
    constraint="$(cd "$(dirname "$constraint")" && pwd)/$(basename "$constraint")"
    log "pinning dependencies with $constraint"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/trio-fwagent-deb.XXXXXX")"
cleanup() {
    if [ "$keep" = 1 ]; then log "staging directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
root="$work/root"
venv="$root$prefix"

# 1. The wheel.
if [ -z "$wheel" ]; then
    log "building the wheel from $project"
    if "$BUILD_PYTHON" -c 'import build' 2>/dev/null; then
        "$BUILD_PYTHON" -m build --wheel --outdir "$work/wheel" "$project" >&2
    else
        "$BUILD_PYTHON" -m pip wheel --no-deps --wheel-dir "$work/wheel" "$project" >&2
    fi
    wheel="$(ls "$work"/wheel/trio_fwagent-*.whl)"
fi
[ -f "$wheel" ] || die "no wheel at $wheel"

# 2. Version: the wheel's metadata (hatchling read trio_fwagent/_version.py), in
# Debian's spelling: pre-releases sort before the release (~), post/local after (+).
upstream="$("$target_python" - "$wheel" <<'PY'
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    text = z.read(meta).decode()
v = re.search(r"^Version: (\S+)$", text, re.M).group(1)
v = re.sub(r"^(\d+)!", r"\1:", v)
v = re.sub(r"[.]?(dev\d*)", r"~~\1", v)
v = re.sub(r"(\d)[.]?(a|b|rc)(\d+)", r"\1~\2\3", v)
v = re.sub(r"[.]?(post\d*)", r"+\1", v)
print(v)
PY
)"
version="$upstream-$revision"
log "version $version"

# 3. The virtualenv, with the target interpreter, at its staging location.
log "creating the virtualenv for $prefix with $target_python"
mkdir -p "$(dirname "$venv")"
"$target_python" -m venv --without-pip "$venv"
pip_args=(install --no-compile --no-warn-script-location --disable-pip-version-check
          --only-binary ':all:')
[ -z "$constraint" ] || pip_args+=(--constraint "$constraint")
log "installing $(basename "$wheel") and its dependencies"
"$BUILD_PYTHON" -m pip --python "$venv/bin/python" "${pip_args[@]}" "$wheel" >&2

# 4. Point everything at the final path.
"$target_python" - "$venv" "$prefix" <<'PY'
import pathlib, sys
venv, prefix = pathlib.Path(sys.argv[1]), sys.argv[2]
old, new = str(venv).encode(), prefix.encode()
files = [p for p in (venv / "bin").iterdir() if p.is_file() and not p.is_symlink()]
files.append(venv / "pyvenv.cfg")
for path in files:
    data = path.read_bytes()
    if old in data:
        path.write_bytes(data.replace(old, new))
# pip records where the wheel came from (a path in the build's temp dir): drop it, so
# the package does not claim a direct-URL install of a file that does not exist.
for direct in venv.glob("lib/python3*/site-packages/*.dist-info/direct_url.json"):
    record = direct.parent / "RECORD"
    lines = record.read_text().splitlines(keepends=True)
    record.write_text("".join(l for l in lines if not l.startswith(direct.parent.name + "/direct_url.json,")))
    direct.unlink()
PY
log "byte-compiling for $prefix"
"$venv/bin/python" -m compileall -q -j 0 --invalidation-mode timestamp \
    -s "$root" -p / "$venv/lib" >&2

# 5. The rest of the tree.
install -d "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/trio-fwagent" \
    "$root/var/lib/trio-fwagent" "$root/usr/share/trio-fwagent/installers" \
    "$root/usr/share/doc/trio-fwagent" "$root/DEBIAN"
ln -s "$prefix/bin/trio-fwagent" "$root/usr/bin/trio-fwagent"
install -m 0644 "$here/systemd/trio-fwagent.service" "$root/lib/systemd/system/"
install -m 0644 "$here/config/agent.toml" "$root/etc/trio-fwagent/agent.toml"
install -m 0755 "$here"/examples/install-*.sh "$root/usr/share/trio-fwagent/installers/"
install -m 0644 "$here/README.md" "$root/usr/share/doc/trio-fwagent/README.md"
install -m 0644 "$here/debian/copyright" "$root/usr/share/doc/trio-fwagent/copyright"

# Normalise modes whatever the umask was; the data directory is root-only.
chmod -R u+rwX,go+rX,go-w "$root"
chmod 0700 "$root/var/lib/trio-fwagent"

# 6. No file may still name the staging directory.
if leaks="$(grep -rlF "$work" "$root" 2>/dev/null)"; then
    die "these files still mention the build directory $work:"$'\n'"$leaks"
fi

# 7. Control files.
if [ -n "$(find "$venv" -name '*.so' -o -name '*.so.*' | head -1)" ]; then
    arch="$(dpkg --print-architecture)"   # a dependency has compiled extensions
else
    arch=all
fi
depends="python3 (>= 3.$py_minor), python3 (<< 3.$((py_minor + 1)))"
size="$(du -sk --apparent-size "$root" | cut -f1)"
maintainer="${DEB_MAINTAINER:-trio-fwagent developers <trio-fwagent@localhost>}"
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@DEPENDS@|$depends|" \
    -e "s|@INSTALLED_SIZE@|$size|" -e "s|@MAINTAINER@|$maintainer|" \
    "$here/debian/control.in" > "$root/DEBIAN/control"
install -m 0644 "$here/debian/conffiles" "$root/DEBIAN/conffiles"
install -m 0755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$root/DEBIAN/"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
    | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

# 8. The package.
deb="$out/trio-fwagent_${version}_${arch}.deb"
log "writing $deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >&2
printf '%s\n' "$deb"
