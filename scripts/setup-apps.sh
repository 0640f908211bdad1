#!/usr/bin/env bash
# Installs the applications pagehop's tests and demos migrate, from Debian's
# packages, idempotently:
#   - redis-server, redis-tools (redis-cli, redis-benchmark),
#   - nginx (the package only: no nginx is left serving port 80),
#   - Debian's python3 (/usr/bin/python3; PATH may find a pyenv python3 first,
#     so tests name /usr/bin/python3 explicitly),
#   - curl, iptables (CRIU's --tcp-established locks the network with it),
#   - debootstrap (scripts/setup-criu.sh builds CRIU's root with it).
# A package already installed is skipped; with nothing missing, this runs no apt.
#
# No service is started by the install: these machines run no systemd
# (PID 1 is not an init system), so a package's postinst would start its
# sysvinit script through invoke-rc.d -- nginx on port 80, redis-server on
# 6379. A policy-rc.d that answers 101 ("action forbidden") is kept in place
# for the install (the machine's own one is put back afterwards), and any
# nginx/redis-server that the install still started is stopped and disabled.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# package:file-that-must-exist (the file, when given, is checked too, so a
# half-removed package is reinstalled).
wanted="redis-server:/usr/bin/redis-server
redis-tools:/usr/bin/redis-cli
redis-tools:/usr/bin/redis-benchmark
nginx:/usr/sbin/nginx
python3:/usr/bin/python3
curl:/usr/bin/curl
iptables:/usr/sbin/iptables
debootstrap:/usr/sbin/debootstrap"

missing=""
while IFS=: read -r pkg file; do
    if ! installed "$pkg" || { [ -n "$file" ] && [ ! -e "$file" ]; }; then
        case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
    fi
done <<EOF
$wanted
EOF

if [ -z "$missing" ]; then
    say "test applications present (redis-server, redis-tools, nginx, python3, curl, iptables, debootstrap)"
    exit 0
fi

# Keep services from starting during the install. The machine's own
# policy-rc.d, if any, is saved and restored.
policy=/usr/sbin/policy-rc.d
saved_policy=""
restore_policy() {
    if [ -n "$saved_policy" ]; then
        mv -f "$saved_policy" "$policy"
    else
        rm -f "$policy"
    fi
}
if [ -e "$policy" ]; then
    saved_policy="$(mktemp /usr/sbin/.policy-rc.d.pagehop.XXXXXX)"
    cp -p "$policy" "$saved_policy"
fi
trap restore_policy EXIT
printf '#!/bin/sh\n# written by pagehop scripts/setup-apps.sh for the duration of an install\nexit 101\n' >"$policy"
chmod 755 "$policy"

say "installing$missing"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null

restore_policy
trap - EXIT

# Whatever the install started anyway (a policy-rc.d is advisory for scripts
# that bypass invoke-rc.d) is stopped, and its boot-time start disabled.
for svc in nginx redis-server; do
    [ -x "/etc/init.d/$svc" ] || continue
    case " $missing " in *" $svc "*) ;; *) continue ;; esac
    if service "$svc" status >/dev/null 2>&1; then
        say "stopping the $svc service the install started"
        service "$svc" stop >/dev/null 2>&1 || true
    fi
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
done

say "installed$missing"
