#!/bin/sh
# HEALTHCHECK of the forgather images. In serve mode the entrypoint writes {"starting": true} to the
# state file (FORGATHER_SERVE_STATE_FILE, default /tmp/forgather-serve.json): unhealthy until
# `forgather serve` replaces it with where it listens; then GET /health there must answer 200. Any
# other mode (no state file) is healthy while it runs. Uses Python's urllib (no curl in the images).
state=${FORGATHER_SERVE_STATE_FILE:-/tmp/forgather-serve.json}
[ -f "$state" ] || exit 0
exec python3 - "$state" <<'PY'
import json, ssl, sys, urllib.request
state = json.load(open(sys.argv[1]))
if "port" not in state:
    print("starting: the server has not started listening yet")
    sys.exit(1)
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
