#!/bin/sh
# The one root step: give a workspace to the rapids user (UID/GID 1001) when
# the storage ignores fsGroup (hostPath, some NFS). As any other user it only
# checks that the workspace is writable, so it is safe to run everywhere.
# usage: init-workspace.sh DIR [UID]
set -eu
dir="${1:?usage: init-workspace.sh DIR [UID]}"
uid="${2:-1001}"
if [ "$(id -u)" = 0 ]; then
    chown -R "${uid}:${uid}" "${dir}"
    chmod u+rwx,g+rwxs "${dir}"
    echo "init-workspace: ${dir} now belongs to ${uid}:${uid}"
else
    test -w "${dir}" || { echo "init-workspace: ${dir} is not writable by UID $(id -u)" >&2; exit 1; }
    echo "init-workspace: not root; ${dir} is writable, nothing to do"
fi
