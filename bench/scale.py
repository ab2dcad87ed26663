"""Scale: one agent serving 100 children that all update at once.

``python bench/scale.py [--quick]``

``trio-fwagent run`` serves 100 child ids (20 with --quick); an independent MQTT client
publishes one request per child in a burst, first all for the same image (the agent may
share one download), then each for a distinct image. The table gives how many
operations completed successfully, the time from the first request to the last
``executing`` and to the last final status, and the agent's peak RSS. Images come from a
private nginx; the agent's data directory is on disk.

Owns: the scale table. Must not touch: the agent or the services.
"""

from __future__ import annotations

import shutil
import time
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
    MIB,
    Options,
    Report,
    Workspace,
    fmt_size,
    log,
    make_file,
    mosquitto_broker,
    nginx_server,
    quantile,
    table,
)

FULL_CHILDREN = 100
QUICK_CHILDREN = 20
FULL_IMAGE = 8 * MIB
QUICK_IMAGE = 256 * 1024


def run(opts: Options, ws: Workspace) -> Report:
    """Both scenarios, each with a fresh agent."""
    cli = require_agent()
    n = QUICK_CHILDREN if opts.quick else FULL_CHILDREN
    size = QUICK_IMAGE if opts.quick else FULL_IMAGE
    limit = 60.0 if opts.quick else 300.0
    work = tmp_workdir(ws.disk, "scale-")
    www = work / "www"
    www.mkdir()
    shas = [make_file(www / f"fw-{i}.bin", size, seed=1000 + i) for i in range(n)]
    children = [f"child{i:03d}" for i in range(n)]
    rows = []
    data: dict[str, Any] = {"children": n, "image_size": size}
    failures: list[str] = []
    try:
        with mosquitto_broker() as port, nginx_server(www, count_bytes=True) as nginx:
            for scenario in ("shared", "distinct"):
                files = [0] * n if scenario == "shared" else list(range(n))
                agent_dir = tmp_workdir(work, f"{scenario}-")
                with (
                    agent_process(cli, agent_dir, port, children) as agent,
                    observer(port) as obs,
                ):
                    # Warm up on a file nobody else asks for, so nothing is cached.
                    warm = www / "warmup.bin"
                    warm_sha = make_file(warm, 4096, seed=999)
                    wait_until_serving(
                        obs, agent, children[0], f"{nginx.base_url}/warmup.bin", warm_sha
                    )
                    _, sent_before = nginx.served()
                    start = time.perf_counter()
                    for child, f in zip(children, files, strict=True):
                        obs.request(
                            child, f"{scenario}-{child}", f"{nginx.base_url}/fw-{f}.bin", shas[f]
                        )
                    obs.wait_all_finished([(c, f"{scenario}-{c}") for c in children], limit)
                    code, rss = agent.stop()
                    if code != 0:
                        failures.append(
                            f"scale {scenario}: the agent exited with {code} on SIGTERM"
                        )
                result = _summarise(obs, scenario, children, start)
                result["agent_maxrss_kib"] = rss
                result["bytes_served"] = nginx.served()[1] - sent_before
                data[scenario] = result
                if result["successful"] != n:
                    failures.append(
                        f"scale {scenario}: {result['successful']}/{n} successful,"
                        f" {result['failed']} failed ({result['reasons'][:3]}),"
                        f" {result['missing']} without a final status after {limit:.0f} s"
                    )
                rows.append(
                    [
                        f"{scenario} image" + ("" if scenario == "shared" else "s"),
                        f"{result['successful']}/{n}",
                        result["last_executing_s"],
                        result["p50_final_s"],
                        result["last_final_s"],
                        f"{n * size / MIB / result['last_final_s']:.0f}"
                        if result["last_final_s"]
                        else "-",
                        f"{result['bytes_served'] / (n * size):.2f}",
                        round(rss / 1024, 1),
                    ]
                )
                log(f"scale: {scenario}: {result['successful']}/{n} in {result['last_final_s']} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = table(
        [
            "scenario",
            "successful",
            "last executing s",
            "p50 final s",
            "last final s",
            "delivered MiB/s",
            "served / needed",
            "agent peak RSS MiB",
        ],
        rows,
    ) + (
        f"\n\n{n} children, one {fmt_size(size)} request each, published in one burst;"
        " times from the first publish. `delivered MiB/s` = children x image size /"
        " last final; `served / needed` = bytes nginx sent / (children x image size):"
        " below 1 when the agent fetches a shared image once for several children."
    )
    return Report("scale", text, data, failures)


def _summarise(obs: Any, scenario: str, children: list[str], start: float) -> dict[str, Any]:
    executing, finals, reasons = [], [], []
    ok = failed = 0
    for child in children:
        op_id = f"{scenario}-{child}"
        e = obs.first(child, op_id, ("executing",))
        f = obs.first(child, op_id, FINAL)
        if e is not None:
            executing.append(e.at - start)
        if f is not None:
            finals.append(f.at - start)
            if f.status == "successful":
                ok += 1
            else:
                failed += 1
                reasons.append(f.reason)
    return {
        "successful": ok,
        "failed": failed,
        "missing": len(children) - ok - failed,
        "reasons": reasons,
        "last_executing_s": round(max(executing), 3) if executing else None,
        "p50_final_s": round(quantile(finals, 0.5), 3) if finals else None,
        "last_final_s": round(max(finals), 3) if finals else None,
        "final_s": finals,
    }


if __name__ == "__main__":
    from common import main_for

    main_for(run, "scale")
