"""Resumable, verified, fast HTTP downloads of firmware images.

This package owns getting one file from a URL onto local disk, whole and verified: the
pure resume and retry rules (:mod:`.decisions`), the sidecar that describes a partial
file (:mod:`.sidecar`), hashing and writing in a worker thread (:mod:`.writer`), an
httpx client that reads the socket in large pieces (:mod:`.transport`) and the Trio
download loop (:mod:`.fetch`). It knows nothing about MQTT, operations or installers.
"""

from trio_fwagent.download.fetch import download, redact_url
from trio_fwagent.download.model import DownloadError, DownloadResult, Progress, RetryPolicy
from trio_fwagent.download.transport import create_client

__all__ = [
    "DownloadError",
    "DownloadResult",
    "Progress",
    "RetryPolicy",
    "create_client",
    "download",
    "redact_url",
]
