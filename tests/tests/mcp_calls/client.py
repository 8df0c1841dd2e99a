"""The agent of the tool-call tests: the official MCP SDK's Client, run
through agentguard, printing one JSON object of what each call gave (a
result, or the MCPError's code, message and data). argv: url, acks folder,
mode (legacy: the initialize handshake and sessions; auto: the SDK's
default, server/discover and the 2026-07-28 revision), rate or norate."""
import asyncio, json, os, sys
from mcp import Client
from mcp.shared.exceptions import MCPError

url, acks, mode, rate = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "rate"

async def call(client, name, args=None, **kw):
    try:
        r = await client.call_tool(name, args or {}, **kw)
        text = r.content[0].text if r.content else None
        return {"ok": not r.is_error, "text": text}
    except MCPError as e:
        return {"ok": False, "code": e.code, "message": e.message, "data": e.data}

async def main():
    out = {}
    async with Client(url, mode=mode) as client:
        out["protocol"] = client.protocol_version
        tools = await client.list_tools()
        out["tools"] = sorted(t.name for t in tools.tools)
        out["add"] = await call(client, "add", {"a": 2, "b": 40})
        out["delete_repo"] = await call(client, "delete_repo", {"owner": "acme", "repo": "widgets"})
        out["create_widgets"] = await call(client, "create_issue", {"owner": "acme", "repo": "widgets", "title": "bug"})
        out["create_secrets"] = await call(client, "create_issue", {"owner": "acme", "repo": "secrets", "title": "bug"})
        out["python_only"] = await call(client, "python_only")
        out["in_window"] = await call(client, "in_window")
        out["in_the_past"] = await call(client, "in_the_past")
        seen = []
        async def progress(p, total, message):
            seen.append(p)
            open(os.path.join(acks, f"ack-{int(p)}"), "w").close()
        out["count"] = await call(client, "count", {"n": 3}, progress_callback=progress)
        out["progress"] = seen
        if rate:
            calls = [await call(client, "ping_tool") for _ in range(21)]
            out["rate"] = calls
            last = calls[-1]
            if not last["ok"] and isinstance(last.get("data"), dict):
                await asyncio.sleep(last["data"]["retryAfterMs"] / 1000 + 0.3)
            out["rate_after"] = await call(client, "ping_tool")
    print(json.dumps(out), flush=True)

asyncio.run(main())
