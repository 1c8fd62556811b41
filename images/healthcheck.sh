#!/bin/sh
# HEALTHCHECK of the forgather images: in serve mode (the server wrote /tmp/forgather-serve.json),
# GET http://127.0.0.1:PORT/health must answer 200; any other mode is healthy while it runs.
# Uses Python's urllib (no curl in the images).
state=/tmp/forgather-serve.json
[ -f "$state" ] || exit 0
exec python3 - "$state" <<'PY'
import json, sys, urllib.request
port = json.load(open(sys.argv[1]))["port"]
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=4) as reply:
        print(reply.read().decode())
        sys.exit(0 if reply.status == 200 else 1)
except Exception as err:  # any failure is "unhealthy", with the reason in docker inspect
    print(f"unhealthy: {err}")
    sys.exit(1)
PY
