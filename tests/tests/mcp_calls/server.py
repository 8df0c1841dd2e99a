"""The MCP server of the tool-call tests: the official SDK's MCPServer over
streamable HTTP with TLS (the test CA's leaf), SSE responses or JSON ones
(argv mode), each tool call it runs written to a log so the test sees what
reached it. `count` sends progress notifications one at a time and waits for
the client to have seen each before the next: it finishes only if the
events reach the client as they are sent. The SSE server keeps its events
(the SDK's EventStore interface, kept in memory), so a GET with
Last-Event-ID replays what followed that event."""
import json, os, sys, time, asyncio
import uvicorn
from mcp.server.mcpserver import MCPServer, Context
from mcp.server.transport_security import TransportSecuritySettings
from mcp.server.streamable_http import EventStore, EventMessage

name, ip, port, cert, key, log, acks, mode = sys.argv[1:9]
port = int(port)
server = MCPServer("agentguard-test-mcp")

def record(tool, **args):
    with open(log, "a") as f:
        f.write(json.dumps({"tool": tool, "args": args}) + "\n")

@server.tool()
def add(a: int, b: int) -> int:
    """Adds two numbers."""
    record("add", a=a, b=b)
    return a + b

@server.tool()
def list_issues(owner: str, repo: str) -> str:
    """Lists issues."""
    record("list_issues", owner=owner, repo=repo)
    return f"issues of {owner}/{repo}"

@server.tool()
def create_issue(owner: str, repo: str, title: str) -> str:
    """Creates an issue."""
    record("create_issue", owner=owner, repo=repo, title=title)
    return f"created {title!r} in {owner}/{repo}"

@server.tool()
def delete_repo(owner: str, repo: str) -> str:
    """Deletes a repository."""
    record("delete_repo", owner=owner, repo=repo)
    return f"deleted {owner}/{repo}"

@server.tool()
def python_only() -> str:
    """Allowed to Python only."""
    record("python_only")
    return "python ok"

@server.tool()
def in_window() -> str:
    """Allowed within the test's time window."""
    record("in_window")
    return "in window"

@server.tool()
def in_the_past() -> str:
    """Allowed only before 2000."""
    record("in_the_past")
    return "time travel"

@server.tool()
def ping_tool() -> str:
    """Rate limited."""
    record("ping_tool")
    return "pong"

@server.tool()
async def count(n: int, ctx: Context) -> str:
    """Reports progress n times; each next step waits for the client to have seen the last."""
    record("count", n=n)
    for i in range(1, n + 1):
        await ctx.report_progress(i, n)
        ack = os.path.join(acks, f"ack-{i}")
        deadline = time.monotonic() + 10
        while not os.path.exists(ack):
            if time.monotonic() > deadline:
                return f"progress {i} never reached the client"
            await asyncio.sleep(0.02)
    return f"counted {n}"

class MemoryEventStore(EventStore):
    """Every event, in order, for resumed streams."""

    def __init__(self):
        self.events = []  # (event id, stream id, message or None)

    async def store_event(self, stream_id, message):
        event_id = str(len(self.events) + 1)
        self.events.append((event_id, stream_id, message))
        return event_id

    async def replay_events_after(self, last_event_id, send_callback):
        ids = [e[0] for e in self.events]
        if last_event_id not in ids:
            return None
        start = ids.index(last_event_id)
        stream = self.events[start][1]
        for event_id, stream_id, message in self.events[start + 1:]:
            if stream_id == stream and message is not None:
                await send_callback(EventMessage(message, event_id))
        return stream

security = TransportSecuritySettings(allowed_hosts=[f"{name}:{port}"], allowed_origins=[])
app = server.streamable_http_app(
    json_response=(mode == "json"),
    event_store=MemoryEventStore() if mode == "sse" else None,
    transport_security=security,
)
uvicorn.run(app, host=ip, port=port, log_level="warning", ssl_certfile=cert, ssl_keyfile=key)
