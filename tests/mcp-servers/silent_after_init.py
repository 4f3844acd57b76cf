"""An MCP server that completes the initialize handshake and then answers nothing, not even a
ping: `tests/session_mcp.rs` checks that starting a session from it fails within the start
timeout instead of hanging. Standard library only, so it runs on any Python 3."""
import json
import sys

for line in sys.stdin:
    message = json.loads(line)
    if message.get("method") == "initialize":
        reply = {
            "jsonrpc": "2.0",
            "id": message["id"],
            "result": {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "silent-after-init", "version": "0"},
            },
        }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
