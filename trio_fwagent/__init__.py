"""trio-fwagent: firmware updates for thin-edge.io child devices, on Trio.

A request arrives over MQTT (:mod:`trio_fwagent.mqtt`), is parsed by the thin-edge
contract (:mod:`trio_fwagent.contract`), becomes an operation that downloads
(:mod:`trio_fwagent.download`), verifies, installs and reports its final status.
"""

from trio_fwagent._version import __version__

__all__ = ["__version__"]
