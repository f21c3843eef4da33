"""200 sequential `agent_run` calls from the stock Python MCP client.

Started by `cargo bench --bench python_client` with the server's command line
and environment; prints one JSON line with the per-call latencies (ms) and
the client's own CPU time. The client validates every structured result
against the tool's output schema, as it does by default.
"""

import asyncio
import json
import os
import resource
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

CALLS = int(os.environ.get("CALLS", "200"))


def is_error(r) -> bool:
    # The SDK renamed its fields in 2.0 (isError -> is_error).
    return bool(getattr(r, "is_error", getattr(r, "isError", False)))


def structured(r) -> dict:
    return getattr(r, "structured_content", None) or getattr(r, "structuredContent", None)
WARMUP = 10


async def main() -> None:
    server = StdioServerParameters(
        command=sys.argv[1], args=sys.argv[2:], env=dict(os.environ)
    )
    async with stdio_client(server) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = await session.list_tools()
            listed = len(json.dumps([t.model_dump(mode="json") for t in tools.tools]))
            args = {"agent": "a", "input": "hello", "wait_seconds": 30}
            for _ in range(WARMUP):
                r = await session.call_tool("agent_run", args)
                assert not is_error(r), r
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            times = []
            for _ in range(CALLS):
                t0 = time.perf_counter()
                r = await session.call_tool("agent_run", args)
                times.append((time.perf_counter() - t0) * 1000.0)
                assert not is_error(r), r
                assert structured(r)["state"] == "succeeded", structured(r)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    import mcp as _m  # noqa: F401

    version = "unknown"
    try:
        from importlib.metadata import version as v

        version = v("mcp")
    except Exception:  # noqa: BLE001
        pass
    cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    print(
        json.dumps(
            {
                "mcp": version,
                "tools_list_bytes": listed,
                "ms": times,
                "client_cpu_ms_per_call": cpu * 1000.0 / CALLS,
            }
        )
    )


asyncio.run(main())
