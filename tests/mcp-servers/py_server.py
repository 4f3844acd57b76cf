"""A tiny MCP server for tetrarch's session tests, built on the PyPI `mcp` package (2.x).

Tools: `add` (structured arguments, structured result), `pid` (the server's process id, so a test
can kill it), `env` (whether a variable is visible, to check the cleared environment),
`fail` (raises ToolError, so the result is flagged isError and carries the message), `calls`
(how many times it has been called in this process, so a test can count warm-up calls).
"""

import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("tetrarch-test")
calls_made = 0


@server.tool()
def add(a: int, b: int) -> dict:
    """Adds two integers."""
    return {"sum": a + b}


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


@server.tool()
def env(name: str) -> str:
    """The value of an environment variable, or <unset>."""
    return os.environ.get(name, "<unset>")


@server.tool()
def fail(message: str) -> str:
    """Always fails with `message`."""
    raise ToolError(message)


@server.tool()
def calls() -> int:
    """How many times this tool has been called, this call included."""
    global calls_made
    calls_made += 1
    return calls_made


if __name__ == "__main__":
    server.run("stdio")
