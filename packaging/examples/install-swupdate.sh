#!/bin/sh
# install-swupdate.sh: install an SWUpdate image (.swu) with `swupdate -i`. Example
# installer for trio-fwagent.
#
# Usage (agent.toml):
#   install_command = "/usr/share/trio-fwagent/installers/install-swupdate.sh"
# Extra arguments are passed to swupdate before -i, e.g. a public key and a selection:
#   install_command = "/usr/share/trio-fwagent/installers/install-swupdate.sh -k /etc/swupdate/public.pem -e stable,copy2"
# If a swupdate daemon is already running on the device, `swupdate -i` competes with
# it; use `swupdate-client` in a copy of this script instead.
#
# Contract with the agent (the same for every installer):
#   input   environment FW_FILE (the downloaded image, already SHA-256 verified),
#           FW_NAME, FW_VERSION, FW_SHA256 (may be empty), FW_OP_ID, FW_CHILD_ID;
#           the agent runs the command without a shell, in its own process group.
#   exit 0  = installed: the agent reports `successful` to the cloud.
#   exit N  = failed: the agent reports `failed` with "installer exited with code N:"
#             followed by the LAST LINES OF STDERR, which is what a person sees in
#             Cumulocity. swupdate logs its errors to stderr; this script adds one
#             summary line after them.
#   timeout = the agent sends SIGTERM to the process group (swupdate included), then
#             SIGKILL: make install_timeout comfortably longer than a full write.
# Exit codes: swupdate's own on failure, 127 when swupdate is not installed, 2 bad
# invocation.
#
# swupdate writes block devices and the boot-loader environment itself, from inside the
# agent's service: see "Hardening" in packaging/README.md for what the systemd unit must
# allow (e.g. ReadWritePaths=/boot when the environment lives there).
set -u

fail() { # fail CODE MESSAGE: the message is the reason the cloud shows
    printf 'install-swupdate: %s\n' "$2" >&2
    exit "$1"
}

[ -n "${FW_FILE:-}" ] || fail 2 "FW_FILE is not set (run me from trio-fwagent)"
[ -f "$FW_FILE" ] || fail 2 "image $FW_FILE does not exist"
command -v swupdate >/dev/null 2>&1 \
    || fail 127 "swupdate is not installed on this device (no 'swupdate' in PATH=$PATH): install swupdate or change install_command"

swupdate "$@" -i "$FW_FILE"
code=$?
[ "$code" -eq 0 ] \
    || fail "$code" "swupdate -i of ${FW_NAME:-firmware} ${FW_VERSION:-} failed (exit $code)"

printf 'install-swupdate: installed %s %s\n' "${FW_NAME:-firmware}" "${FW_VERSION:-}"
exit 0
