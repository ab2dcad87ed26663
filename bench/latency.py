"""Latency: firmware request published -> ``executing`` received, through mosquitto.

``python bench/latency.py [--quick]``

A private mosquitto, a private nginx serving a 4 KiB image, and ``trio-fwagent run`` as a
child process serving one child (installer: ``true``). An independent MQTT client
(paho-mqtt) publishes 200 requests one after another (20 with --quick), each after the
previous one finished, and timestamps the ``executing`` and the final status it receives.
The table gives p50 / p90 / p99 / max of both, and the agent's peak RSS.

Owns: the latency table. Must not touch: the agent or the services.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from agent_harness import (
    FINAL,
    agent_process,
    observer,
    require_agent,
    tmp_workdir,
    wait_until_serving,
)
from common import (
    BenchError,
    Options,
    Report,
    Workspace,
    log,
    make_file,
    median,
    mosquitto_broker,
    nginx_server,
    quantile,
    table,
)

FULL_REQUESTS = 200
QUICK_REQUESTS = 20
IMAGE_SIZE = 4096
CHILD = "bench-child"


# mosquitto's default set_tcp_nodelay false (thin-edge's too) lets Nagle's algorithm hold
# a message until the client acknowledged the broker's previous segment: up to the 40 ms
# delayed-ACK time when requests follow each other closely. Both are measured, so the
# agent's own latency is visible beside what a default broker adds.
SCENARIOS = (("mosquitto defaults", False), ("set_tcp_nodelay true", True))


def _measure(
    cli: list[str], work: Path, count: int, tcp_nodelay: bool, failures: list[str]
) -> tuple[list[float], list[float], float, int]:
    """Sequential requests through one broker; (to executing, to final, elapsed, agent RSS)."""
    www = work / "www"
    www.mkdir(exist_ok=True)
    sha = make_file(www / "small.bin", IMAGE_SIZE, seed=7)
    to_executing: list[float] = []
    to_final: list[float] = []
    with (
        mosquitto_broker(tcp_nodelay=tcp_nodelay) as port,
        nginx_server(www) as nginx,
        agent_process(cli, work, port, [CHILD]) as agent,
        observer(port) as obs,
    ):
        url = f"{nginx.base_url}/small.bin"
        wait_until_serving(obs, agent, CHILD, url, sha)
        started = time.monotonic()
        for i in range(count):
            op_id = f"lat-{i}"
            t0 = obs.request(CHILD, op_id, url, sha)
            done = obs.wait_for(obs.finished(CHILD, op_id), 30)
            if not done:
                agent.check_alive()
                raise BenchError(f"no final status for {op_id} in 30 s:\n{agent.log_tail()}")
            final = obs.first(CHILD, op_id, FINAL)
            executing = obs.first(CHILD, op_id, ("executing",))
            assert final is not None
            if final.status != "successful":
                failures.append(f"latency {op_id}: {final.status}: {final.reason}")
                continue
            if executing is None:
                failures.append(f"latency {op_id}: no executing before {final.status}")
            else:
                to_executing.append(executing.at - t0)
            to_final.append(final.at - t0)
        elapsed = time.monotonic() - started
        code, rss = agent.stop()
        if code != 0:
            failures.append(f"latency: the agent exited with {code} after SIGTERM")
    return to_executing, to_final, elapsed, rss


def run(opts: Options, ws: Workspace) -> Report:
    """Publish requests one at a time and time the agent's answers, per broker setting."""
    cli = require_agent()
    count = QUICK_REQUESTS if opts.quick else FULL_REQUESTS
    failures: list[str] = []
    rows: list[list[Any]] = []
    data: dict[str, Any] = {"requests": count, "scenarios": {}}

    def ms(values: list[float], q: float) -> float:
        return 1000 * quantile(values, q)

    for name, nodelay in SCENARIOS:
        work = tmp_workdir(ws.disk, "latency-")
        try:
            to_executing, to_final, elapsed, rss = _measure(cli, work, count, nodelay, failures)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log(f"latency ({name}): {count} requests in {elapsed:.1f} s")
        for interval, vals in (("executing", to_executing), ("successful", to_final)):
            rows.append(
                [
                    name,
                    f"request -> {interval}",
                    len(vals),
                    ms(vals, 0.5),
                    ms(vals, 0.9),
                    ms(vals, 0.99),
                    1000 * max(vals) if vals else None,
                ]
            )
        data["scenarios"][name] = {
            "to_executing_s": to_executing,
            "to_final_s": to_final,
            "p50_executing_ms": ms(to_executing, 0.5),
            "p99_executing_ms": ms(to_executing, 0.99),
            "median_final_ms": 1000 * median(to_final),
            "agent_maxrss_kib": rss,
            "elapsed_s": elapsed,
        }
    text = (
        table(["broker", "interval", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)
        + f"\n\n{count} sequential requests for one child ({IMAGE_SIZE} B image, installer"
        " `true`) per broker setting. mosquitto's default `set_tcp_nodelay false` (also"
        " thin-edge's) lets Nagle's algorithm hold a message up to the 40 ms delayed-ACK time"
        " when requests follow each other closely; the second setting shows the agent alone."
    )
    return Report("latency", text, data, failures)


if __name__ == "__main__":
    from common import main_for

    main_for(run, "latency")
