"""A client whose registered parent dies between two requests on one
keep-alive connection, then opens a second connection.

Run as `sh -c 'python3 THIS URL METHOD & wait'` by `agentguard exec`: the
shell is the registered process, and this client kills it after its first
request, so its second request goes on the same connection from a process
whose registered ancestor is gone. Prints the three statuses, whether the
second request used the first connection, and whether the parent is gone.
"""

import http.client
import os
import signal
import ssl
import sys
import time
import urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
method = sys.argv[2]


def connect():
    return http.client.HTTPSConnection(
        url.hostname, url.port, timeout=20, context=ssl.create_default_context()
    )


def send(conn):
    body = b'{"title": "printer on fire"}' if method == "POST" else None
    headers = {"content-type": "application/json"} if body else {}
    conn.request(method, url.path, body=body, headers=headers)
    response = conn.getresponse()
    response.read()
    return response.status


conn = connect()
first = send(conn)
sock = conn.sock
parent = os.getppid()
os.kill(parent, signal.SIGKILL)
deadline = time.monotonic() + 10
while os.getppid() == parent and time.monotonic() < deadline:
    time.sleep(0.05)
second = send(conn)
third = send(connect())
print(first, second, conn.sock is sock, os.getppid() != parent, third)
