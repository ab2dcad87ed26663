#!/bin/sh
# install-rauc.sh: install a RAUC bundle into the inactive slot. Example installer for
# trio-fwagent.
#
# Usage (agent.toml):
#   install_command = "/usr/share/trio-fwagent/installers/install-rauc.sh"
# Extra arguments are passed to `rauc install` before the bundle, e.g.
#   install_command = "/usr/share/trio-fwagent/installers/install-rauc.sh --progress"
#
# Contract with the agent (the same for every installer):
#   input   environment FW_FILE (the downloaded bundle, already SHA-256 verified),
#           FW_NAME, FW_VERSION, FW_SHA256 (may be empty), FW_OP_ID, FW_CHILD_ID;
#           the agent runs the command without a shell, in its own process group.
#   exit 0  = installed: the agent reports `successful` to the cloud.
#   exit N  = failed: the agent reports `failed` with "installer exited with code N:"
#             followed by the LAST LINES OF STDERR, which is what a person sees in
#             Cumulocity. rauc writes its own error to stderr; this script adds one
#             summary line after it.
#   timeout = the agent sends SIGTERM to the process group, then SIGKILL. Note that
#             `rauc install` is only a D-Bus client: the rauc service does the writing
#             and finishes (or fails) on its own even if the client is killed.
# Exit codes: rauc's own on failure, 127 when rauc is not installed, 2 bad invocation.
#
# rauc checks the bundle's signature and compatible string itself. The new slot is
# active after the next reboot; do not reboot from here (the agent would be killed
# before it reports `successful`). To reboot shortly after reporting, add for example
#   systemd-run --on-active=60 systemctl reboot
# before `exit 0` below.
set -u

fail() { # fail CODE MESSAGE: the message is the reason the cloud shows
    printf 'install-rauc: %s\n' "$2" >&2
    exit "$1"
}

[ -n "${FW_FILE:-}" ] || fail 2 "FW_FILE is not set (run me from trio-fwagent)"
[ -f "$FW_FILE" ] || fail 2 "bundle $FW_FILE does not exist"
command -v rauc >/dev/null 2>&1 \
    || fail 127 "rauc is not installed on this device (no 'rauc' in PATH=$PATH): install rauc or change install_command"

rauc install "$@" "$FW_FILE"
code=$?
[ "$code" -eq 0 ] \
    || fail "$code" "rauc install of ${FW_NAME:-firmware} ${FW_VERSION:-} failed (exit $code)"

printf 'install-rauc: installed %s %s; active after the next reboot\n' \
    "${FW_NAME:-firmware}" "${FW_VERSION:-}"
exit 0
