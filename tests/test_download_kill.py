"""A download process killed with SIGKILL halfway resumes from its partial file when run again."""

from __future__ import annotations

import hashlib
import random
import signal
import sys
from pathlib import Path

import trio

from trio_fwagent.download import RetryPolicy, download
from trio_fwagent.testing.fileserver import Faults, FaultyFileServer

MiB = 1 << 20

CHILD = """
import sys, trio
from pathlib import Path
from trio_fwagent.download import download
trio.run(lambda: download(sys.argv[1], Path(sys.argv[2]), sha256=sys.argv[3]))
"""


async def test_sigkilled_download_resumes_with_little_extra_traffic(
    fault_server: FaultyFileServer, tmp_path: Path
) -> None:
    data = random.Random(7).randbytes(64 * MiB)
    digest = hashlib.sha256(data).hexdigest()
    faults = Faults(throttle=32 * MiB)  # ~2 s for the whole file: time to kill it halfway
    url = fault_server.add_file("/fw.bin", data, faults)
    stats = fault_server.stats_for("/fw.bin")
    dest = tmp_path / "fw.bin"

    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD, url, str(dest), digest]
    )
    try:
        with trio.fail_after(30):
            while stats.body_bytes < len(data) // 2:
                assert process.poll() is None, "the download process ended early"
                await trio.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    part = tmp_path / "fw.bin.part"
    kept = part.stat().st_size
    assert len(data) // 4 < kept < len(data)
    assert (tmp_path / "fw.bin.part.json").exists()

    faults.throttle = None
    result = await download(url, dest, sha256=digest, retry=RetryPolicy(base_delay=0.01))
    assert (result.resumes, result.restarts) == (1, 0)
    assert stats.ranges[-1] == f"bytes={kept}-"
    assert stats.body_bytes < 1.1 * len(data)
    assert dest.read_bytes() == data
