#!/bin/sh
# install-copy.sh: install a firmware image by copying it ATOMICALLY over a file
# (a partition image, an MCU firmware blob, ...). Example installer for trio-fwagent.
#
# Usage (agent.toml):
#   install_command = "/usr/share/trio-fwagent/installers/install-copy.sh /srv/fw/current.img"
# The target is the first argument, or $INSTALL_TARGET. Its directory must exist.
#
# Contract with the agent (the same for every installer):
#   input   environment FW_FILE (the downloaded image, already SHA-256 verified),
#           FW_NAME, FW_VERSION, FW_SHA256 (may be empty), FW_OP_ID, FW_CHILD_ID;
#           the agent runs the command without a shell, in its own process group.
#   exit 0  = installed: the agent reports `successful` to the cloud.
#   exit N  = failed: the agent reports `failed` with "installer exited with code N:"
#             followed by the LAST LINES OF STDERR, which is what a person sees in
#             Cumulocity. So the last line written to stderr must say what went wrong.
#   timeout = the agent sends SIGTERM to the process group, then SIGKILL.
# Exit codes used here: 1 copy/verify failed, 2 bad invocation (missing FW_FILE or target).
#
# How it is atomic: the image is written to a temporary file in the target's directory,
# flushed (fsync), checked against FW_SHA256 once more (catches a bad write), given the
# mode, then renamed over the target (rename is atomic within one file system) and the
# directory is flushed. Readers see the old file or the new one, never a mix, and a
# power cut leaves one of the two. A block device cannot be replaced like this: for
# partitions use an A/B updater (install-rauc.sh, install-swupdate.sh).
set -u

fail() { # fail CODE MESSAGE: the message is the reason the cloud shows
    printf 'install-copy: %s\n' "$2" >&2
    exit "$1"
}

[ -n "${FW_FILE:-}" ] || fail 2 "FW_FILE is not set (run me from trio-fwagent)"
[ -f "$FW_FILE" ] || fail 2 "image $FW_FILE does not exist"
target="${1:-${INSTALL_TARGET:-}}"
[ -n "$target" ] || fail 2 "no target file: give it as the first argument or INSTALL_TARGET"
[ -b "$target" ] && fail 2 "$target is a block device: it cannot be replaced atomically (use an A/B updater such as rauc or swupdate)"
[ -d "$target" ] && fail 2 "$target is a directory; give the file to replace"
dir=$(dirname -- "$target")
base=$(basename -- "$target")
[ -d "$dir" ] || fail 2 "target directory $dir does not exist"
mode="${INSTALL_MODE:-0644}"

tmp=""
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() { [ -z "$tmp" ] || rm -f -- "$tmp"; }
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

tmp=$(mktemp "$dir/.$base.XXXXXX" 2>/dev/null) \
    || fail 1 "cannot create a temporary file in $dir (read-only or no permission?)"
err=$(cat -- "$FW_FILE" 2>&1 >"$tmp") \
    || fail 1 "writing $target failed: ${err:-cat failed} (disk full?)"
# fsync the data before the rename makes it visible (coreutils/busybox sync FILE).
sync -- "$tmp" 2>/dev/null || sync

if [ -n "${FW_SHA256:-}" ]; then
    # From stdin: with a file name holding "\" or a newline sha256sum prefixes a "\".
    got=$(sha256sum <"$tmp" | cut -d' ' -f1)
    expected=$(printf '%s' "$FW_SHA256" | tr 'A-F' 'a-f')
    [ "$got" = "$expected" ] \
        || fail 1 "written copy of ${FW_NAME:-the image} ${FW_VERSION:-} has sha256 $got, expected $expected (bad storage?)"
fi

chmod "$mode" "$tmp" || fail 1 "cannot set mode $mode on the new $target"
mv -f -- "$tmp" "$target" || fail 1 "cannot rename the new image over $target"
tmp=""
sync -- "$dir" 2>/dev/null || sync

printf 'install-copy: installed %s %s to %s\n' "${FW_NAME:-?}" "${FW_VERSION:-?}" "$target"
exit 0
