#!/bin/bash
# forgather container entrypoint (run by tini, PID 1):
#   1. print a one-line GPU summary (nvidia-smi when present) on stderr;
#   2. as root: give the user `forgather` the uid/gid of PUID/PGID (default: the image's), then drop
#      to it with gosu; started as another user (docker run --user): run as that user;
#   3. dispatch the command:
#        (none)                          forgather --help
#        forgather ARGS | -OPTION ...    forgather ARGS
#        fgl-train ARGS                  forgather train ARGS
#        SUBCOMMAND ARGS                 forgather SUBCOMMAND ARGS (train, ls, pp, generate, ...)
#        serve [MODEL] [FLAGS]           forgather serve (MODEL defaults to $FORGATHER_SERVE_MODEL)
#        anything else (bash, python, torchrun, ...)   exec'd as is
# Environment: PUID, PGID, FORGATHER_QUIET=1 (no GPU line), FORGATHER_DEV_EDITABLE=1 (dev image:
# `pip install --no-deps -e` the checkout at FORGATHER_SRC, default /workspace/forgather, first).
set -euo pipefail

USER_NAME=forgather
SUBCOMMANDS_FILE=/opt/forgather/subcommands

say() { echo "forgather-entrypoint: $*" >&2; }

gpu_summary() {
    [ "${FORGATHER_QUIET:-0}" = 1 ] && return 0
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        say "GPUs: none visible (no nvidia-smi); running on CPU"
        return 0
    fi
    local rows driver
    if ! rows=$(timeout 20 nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader,nounits 2>&1); then
        say "GPUs: nvidia-smi failed: $(echo "$rows" | head -n 1)"
        return 0
    fi
    driver=$(timeout 20 nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -n 1)
    local count
    count=$(printf '%s\n' "$rows" | sed '/^$/d' | wc -l)
    say "GPUs: $count ($(printf '%s\n' "$rows" | sed '/^$/d' | awk -F', ' '{printf "%s%s: %s %s MiB", (NR>1?"; ":""), $1, $2, $3}')), driver ${driver:-?}"
}

# Give `forgather` the ids PUID/PGID; sets TARGET (gosu's user: forgather, or uid:gid as a fallback),
# TARGET_UID and TARGET_GID.
remap_user() {
    local cur_uid cur_gid want_uid want_gid
    cur_uid=$(id -u "$USER_NAME")
    cur_gid=$(id -g "$USER_NAME")
    want_uid=${PUID:-$cur_uid}
    want_gid=${PGID:-$cur_gid}
    if ! [[ $want_uid =~ ^[0-9]+$ && $want_gid =~ ^[0-9]+$ ]]; then
        say "PUID/PGID must be numbers (got PUID=${PUID:-} PGID=${PGID:-})"
        exit 2
    fi
    TARGET_UID=$want_uid
    TARGET_GID=$want_gid
    TARGET="$want_uid:$want_gid"
    if [ "$want_gid" != "$cur_gid" ] && ! groupmod --non-unique --gid "$want_gid" "$USER_NAME" 2>/dev/null; then
        say "could not change group id to $want_gid (read-only root?); running as $TARGET without a name"
        return 0
    fi
    if [ "$want_uid" != "$cur_uid" ] && ! usermod --non-unique --uid "$want_uid" "$USER_NAME" >/dev/null 2>&1; then
        say "could not change user id to $want_uid (read-only root?); running as $TARGET without a name"
        return 0
    fi
    if [ "$want_uid" != "$cur_uid" ] || [ "$want_gid" != "$cur_gid" ]; then
        chown -R "$want_uid:$want_gid" "/home/$USER_NAME"
    fi
    # The workspace and cache directories: the image's own (still owned by the old uid), or empty
    # ones that the engine created as root for a bind mount. Never recurse into mounted data.
    local dir owner
    for dir in /workspace "${XDG_CACHE_HOME:-}" "${HF_HOME:-}"; do
        [ -n "$dir" ] && [ -d "$dir" ] || continue
        owner=$(stat -c %u "$dir")
        if [ "$owner" = "$want_uid" ]; then
            continue
        elif [ "$owner" = "$cur_uid" ] || { [ "$owner" = 0 ] && [ -z "$(ls -A "$dir")" ]; }; then
            chown "$want_uid:$want_gid" "$dir" || say "could not chown $dir"
        fi
    done
    TARGET=$USER_NAME
}

is_subcommand() {
    local name=$1
    if [ -s "$SUBCOMMANDS_FILE" ]; then
        grep -qxF -- "$name" "$SUBCOMMANDS_FILE"
    else
        case "$name" in
            checkpoint | code | construct | control | dataset | diff | explain | generate | graph | ls | \
                meta | pp | project | targets | tb | tlist | train | trefs | validate | ws) return 0 ;;
            *) return 1 ;;
        esac
    fi
}

dev_editable() {
    local src=${FORGATHER_SRC:-/workspace/forgather} venv=${VIRTUAL_ENV:-/opt/forgather/venv} stamp
    if [ ! -f "$src/pyproject.toml" ]; then
        say "FORGATHER_DEV_EDITABLE=1 but $src/pyproject.toml is missing (mount the checkout: -v \$PWD:$src)"
        exit 2
    fi
    say "pip install --no-deps -e $src"
    stamp=$(mktemp)
    # As the current user (root before the drop): the venv may belong to another uid than PUID.
    pip install --quiet --no-deps --no-build-isolation --no-index -e "$src" >&2
    if [ -n "${TARGET_UID:-}" ]; then
        # Hand what pip just wrote to the user, without touching (and copying up) the rest.
        find "$venv" -newer "$stamp" -user 0 -exec chown -h "$TARGET_UID:$TARGET_GID" {} +
    fi
    rm -f "$stamp"
}

# Serve mode is unhealthy until the server records where it listens (it replaces this file).
mark_serve_starting() {
    local state=${FORGATHER_SERVE_STATE_FILE:-/tmp/forgather-serve.json}
    printf '{"starting": true}\n' >"$state" || return 0
    if [ -n "${TARGET_UID:-}" ]; then
        chown "$TARGET_UID:$TARGET_GID" "$state" || true
    fi
}

gpu_summary

AS_USER=()
if [ "$(id -u)" = 0 ]; then
    if [ "${PUID:-}" = 0 ]; then
        say "PUID=0: running as root"
    else
        remap_user
        AS_USER=(gosu "$TARGET")
    fi
fi

if [ $# -eq 0 ]; then
    set -- forgather --help
fi
case "$1" in
    forgather) ;;
    fgl-train) shift; set -- forgather train "$@" ;;
    serve) shift; set -- forgather serve "$@"; mark_serve_starting ;;
    -*) set -- forgather "$@" ;;
    *) if is_subcommand "$1"; then set -- forgather "$@"; fi ;;
esac

if [ "${FORGATHER_DEV_EDITABLE:-0}" = 1 ]; then
    dev_editable
fi

exec "${AS_USER[@]}" "$@"
