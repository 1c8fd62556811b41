#!/bin/sh
# HEALTHCHECK of the forgather images: in serve mode (`forgather serve` wrote the state file named by
# FORGATHER_SERVE_STATE_FILE, default /tmp/forgather-serve.json), GET /health on the server's port must
# answer 200; any other mode is healthy while it runs. Uses Python's urllib (no curl in the images).
state=${FORGATHER_SERVE_STATE_FILE:-/tmp/forgather-serve.json}
[ -f "$state" ] || exit 0
exec python3 - "$state" <<'PY'
import json, ssl, sys, urllib.request
state = json.load(open(sys.argv[1]))
host = state.get("host") or "127.0.0.1"
if host in ("0.0.0.0", "::", ""):
    host = "127.0.0.1"
if ":" in host:
    host = f"[{host}]"
scheme = state.get("scheme", "http")
# The server checks itself over loopback: its certificate need not name this address.
context = ssl._create_unverified_context() if scheme == "https" else None
try:
    url = f"{scheme}://{host}:{state['port']}/health"
    with urllib.request.urlopen(url, timeout=4, context=context) as reply:
        print(reply.read().decode())
        sys.exit(0 if reply.status == 200 else 1)
except Exception as err:  # any failure is "unhealthy", with the reason in docker inspect
    print(f"unhealthy: {err}")
    sys.exit(1)
PY
