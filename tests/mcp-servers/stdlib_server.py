"""A minimal MCP server on the Python standard library, for what a well-behaved server built on
an SDK cannot be made to do: `tests/session_mcp.rs` uses it for an oversized result, a tool list
that never comes (`python3 stdlib_server.py silent-list`), and a call that outlives its session.

Tools: `big` (`bytes` of text), `pid` (the server's process id), `sleep` (`seconds`, then "slept"),
`say` (its `message`, as an error result when `fail` is true), `die` (writes a traceback-like line
on stderr and exits 3 mid-call), `leave` (answers with its process id, then exits, leaving a child
that holds its pipes open).
"""
import json
import os
import subprocess
import sys
import time

SILENT_LIST = sys.argv[1:] == ["silent-list"]
TOOLS = [
    {"name": name, "inputSchema": {"type": "object"}}
    for name in ("big", "pid", "sleep", "say", "die", "leave")
]


def reply(message, result):
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + "\n")
    sys.stdout.flush()


def text(body):
    return {"content": [{"type": "text", "text": body}]}


for line in sys.stdin:
    message = json.loads(line)
    method = message.get("method")
    if "id" not in message:
        continue  # a notification
    if method == "initialize":
        reply(message, {
            "protocolVersion": message["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "stdlib-server", "version": "0"},
        })
    elif method == "ping":
        reply(message, {})
    elif method == "tools/list":
        if not SILENT_LIST:
            reply(message, {"tools": TOOLS})
    elif method == "tools/call":
        name = message["params"]["name"]
        args = message["params"].get("arguments") or {}
        if name == "big":
            reply(message, text("x" * int(args["bytes"])))
        elif name == "pid":
            reply(message, text(str(os.getpid())))
        elif name == "say":
            reply(message, {**text(args["message"]), "isError": bool(args.get("fail"))})
        elif name == "die":
            sys.stderr.write("ValueError: model file corrupt\n")
            sys.stderr.flush()
            sys.exit(3)
        elif name == "leave":
            reply(message, text(str(os.getpid())))
            subprocess.Popen(["sleep", "30"])
            sys.exit(0)
        elif name == "sleep":
            time.sleep(float(args["seconds"]))
            reply(message, text("slept"))
