#!/usr/bin/env python3
"""Plays an agent against Gantry's MCP server with the `mcp` client from PyPI, over the
streamable HTTP transport (`http URL TOKEN NAME`) or stdio (`stdio GANTRY_BINARY API_URL TOKEN NAME`: the
agent runs `gantry mcp` itself, as nobody when this runs as root, with no state directory).

Creates a preview NAME from the python-web template and waits until it serves, runs a test
command in it against its own service, breaks it (kills the service) and reads diagnose, then
destroys it. Prints one JSON object per step on stdout for the test to check."""
import asyncio
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def emit(step, result):
    structured = getattr(result, "structured_content", None)
    print(json.dumps({"step": step, "isError": bool(result.is_error), "text": result.content[0].text if result.content else "",
                      "structured": structured}), flush=True)
    return structured or {}


async def play(session, name):
    await session.initialize()
    tools = await session.list_tools()
    print(json.dumps({"step": "tools", "tools": {t.name: {"readOnly": getattr(t.annotations, "read_only_hint", None),
                                                           "destructive": getattr(t.annotations, "destructive_hint", None),
                                                           "output": t.output_schema is not None} for t in tools.tools}}), flush=True)
    created = emit("create", await session.call_tool("create_environment", {"name": name, "template": "python-web", "task": "MCP-1", "wait": 90}))
    environment = created.get("environment", name)
    emit("exec", await session.call_tool("exec", {"name": name, "command": ["sh", "-c", "curl -fsS http://127.0.0.1:$PORT/ && echo && echo tests-passed"], "timeoutSeconds": 30}))
    emit("break", await session.call_tool("exec", {"name": name, "command": ["sh", "-c", "pkill -9 -u \"$(id -u)\" -f server.py; true"]}))
    diagnosis = {}
    deadline = time.time() + 30
    while time.time() < deadline:
        diagnosis = emit("diagnose", await session.call_tool("diagnose", {"name": name}))
        services = diagnosis.get("services") or []
        if services and services[0].get("restarts", 0) >= 1:
            break
        await asyncio.sleep(0.5)
    emit("logs", await session.call_tool("logs", {"name": name, "tail": 5}))
    emit("budget", await session.call_tool("budget", {}))
    emit("wake", await session.call_tool("wake_environment", {"name": name}))
    emit("forbidden", await session.call_tool("exec", {"name": "web", "command": ["id"]}))
    emit("destroy", await session.call_tool("destroy_environment", {"name": name}))
    deadline = time.time() + 60
    while time.time() < deadline:
        result = await session.call_tool("get_environment", {"name": environment})
        if result.is_error:
            emit("gone", result)
            break
        await asyncio.sleep(0.5)
    emit("audit", await session.call_tool("audit_log", {"environment": environment, "limit": 50}))


async def main():
    if sys.argv[1] == "http":
        url, token, name = sys.argv[2:5]
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        async with streamable_http_client(url, http_client=client) as streams:
            async with ClientSession(streams[0], streams[1]) as session:
                await play(session, name)
    else:
        binary, api, token, name = sys.argv[2:6]
        command, args = binary, ["mcp", "--api", api, "--state", "/nonexistent"]
        if os.geteuid() == 0:
            command, args = "setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", binary] + args
        params = StdioServerParameters(command=command, args=args, env={**os.environ, "GANTRY_TOKEN": token})
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await play(session, name)


asyncio.run(main())
