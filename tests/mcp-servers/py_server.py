"""A tiny MCP server for tetrarch's session tests, built on the PyPI `mcp` package (2.x).

Tools: `add` (structured arguments, structured result), `pid` (the server's process id, so a test
can kill it), `env` (whether a variable is visible, to check the cleared environment),
`fail` (raises ToolError, so the result is flagged isError and carries the message).
"""

import os

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("tetrarch-test")


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


if __name__ == "__main__":
    server.run("stdio")
