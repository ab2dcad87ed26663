"""thin-edge firmware contract: parse requests, build status messages, in two dialects.

Owns the exact MQTT topics, payload bytes, retain flags and QoS of the firmware update
contract between thin-edge and a child device: the legacy ``tedge/{child}/commands/...``
topics of the user document (:data:`LEGACY`) and thin-edge 1.x ``te/...`` commands
(:data:`TE`). Everything here is pure (no I/O, no clock): bytes in, requests out;
requests and statuses in, messages to publish out. It must not publish, schedule, or
decide what an operation does.
"""

from __future__ import annotations

from collections.abc import Mapping

from trio_fwagent.contract.legacy import LEGACY, LegacyDialect
from trio_fwagent.contract.model import (
    MAX_PAYLOAD_BYTES,
    Dialect,
    FirmwareRequest,
    InvalidRequest,
    Status,
    StatusMessage,
    check_child_id,
    operation_key,
)
from trio_fwagent.contract.te import TE, TeDialect, registration_messages, twin_message

__all__ = [
    "DIALECTS",
    "LEGACY",
    "MAX_PAYLOAD_BYTES",
    "TE",
    "Dialect",
    "FirmwareRequest",
    "InvalidRequest",
    "LegacyDialect",
    "Status",
    "StatusMessage",
    "TeDialect",
    "check_child_id",
    "operation_key",
    "registration_messages",
    "twin_message",
]

#: Dialects by their configuration name (``dialect = "legacy" | "te"``).
DIALECTS: Mapping[str, Dialect] = {"legacy": LEGACY, "te": TE}
