"""An MCP client for the system test tests/system/mcp.rs: the official `mcp` package (PyPI).

    mcp_client.py <url> <api key> <scenario> [args...]

It speaks one JSON object per line on stdout (`{"event": ..., ...}`) and reads lines on
stdin when the Rust test must act in between (drop a pack). Scenarios:

  agent <profile>       list tools, create a sandbox, call python_run, then wait for the test
                        to drop a pack (prints "ready_for_drop", reads "dropped"), and report
                        the tools/list_changed notification and the new list
  scoped <sandbox id>   list tools, then call filesystem_read, shell_run and sandbox_exec
  approval <sandbox id> call shell_run where the profile makes it wait for an approver, then
           wait for it with approval_wait (after `approved` on stdin)
"""

import asyncio
import json
import sys

import httpx2
from mcp import types
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client


def say(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


def result_json(result):
    return {
        "is_error": bool(result.is_error),
        "structured": result.structured_content,
        "text": [block.text for block in result.content if getattr(block, "type", "") == "text"],
    }


async def read_line():
    return (await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)).strip()


async def agent(session, changed, profile):
    tools = await session.list_tools()
    say("tools", tools=[tool.model_dump(mode="json", by_alias=True, exclude_none=True) for tool in tools.tools])
    created = await session.call_tool("sandbox_create", {"profile": profile})
    say("created", result=result_json(created))
    sandbox = created.structured_content["id"]
    run = await session.call_tool(
        "python_run",
        {"sandbox_id": sandbox, "input": {"code": "import math\nresult = {'answer': math.factorial(10) + 7}"}},
    )
    say("python_run", result=result_json(run))
    say("ready_for_drop")
    if await read_line() != "dropped":
        raise SystemExit("expected `dropped` on stdin")
    await asyncio.wait_for(changed.wait(), timeout=60)
    say("list_changed")
    tools = await session.list_tools()
    say("tools_after", tools=[tool.name for tool in tools.tools])
    run = await session.call_tool(
        "python_run", {"sandbox_id": sandbox, "input": {"code": "result = 6 * 7"}}
    )
    say("python_run_after", result=result_json(run))


async def scoped(session, sandbox):
    tools = await session.list_tools()
    say("tools", tools=[tool.name for tool in tools.tools])
    for name, arguments in [
        ("filesystem_read", {"sandbox_id": sandbox, "input": {"path": "notes.txt"}}),
        ("shell_run", {"sandbox_id": sandbox, "input": {"command": "touch escaped"}}),
        ("sandbox_exec", {"sandbox_id": sandbox, "command": "touch escaped"}),
        ("sandbox_file_write", {"sandbox_id": sandbox, "path": "escaped", "content": "x"}),
    ]:
        result = await session.call_tool(name, arguments)
        say("called", tool=name, result=result_json(result))


async def approval(session, sandbox):
    result = await session.call_tool(
        "shell_run", {"sandbox_id": sandbox, "input": {"command": "echo ran >> approved.log"}}
    )
    say("called", tool="shell_run", result=result_json(result))
    approval_id = result.structured_content["approval"]["id"]
    waited = await session.call_tool("approval_wait", {"approval_id": approval_id, "wait_secs": 0})
    say("still_pending", result=result_json(waited))
    if await read_line() != "approved":
        raise SystemExit("expected `approved` on stdin")
    waited = await session.call_tool("approval_wait", {"approval_id": approval_id, "wait_secs": 30})
    say("waited", result=result_json(waited))
    forged = await session.call_tool("approval_wait", {"approval_id": approval_id + "x"})
    say("forged", result=result_json(forged))


async def main():
    url, key, scenario, *args = sys.argv[1:]
    changed = asyncio.Event()

    async def on_message(message):
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(120.0))
    async with http, streamable_http_client(url, http_client=http) as (read, write):
        async with ClientSession(read, write, message_handler=on_message) as session:
            initialized = await session.initialize()
            say(
                "initialized",
                protocol=initialized.protocol_version,
                server=initialized.server_info.name,
                list_changed=bool(initialized.capabilities.tools and initialized.capabilities.tools.list_changed),
            )
            if scenario == "agent":
                await agent(session, changed, *args)
            elif scenario == "scoped":
                await scoped(session, *args)
            elif scenario == "approval":
                await approval(session, *args)
            else:
                raise SystemExit(f"unknown scenario {scenario}")
    say("done")


asyncio.run(main())
