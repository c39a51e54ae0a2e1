#!/usr/bin/env bash
# Provision a Slipway instance: the app runtimes, the deploy user, the deploy and build
# programs, log forwarding, metrics.
#
# Used unchanged by the EC2 Image Builder component (baking: no SLIPWAY_* set, so only the
# generic part runs) and by the launch template's user data on every boot (stock Amazon
# Linux 2023 or a baked image), and by the tests on Debian 12. Safe to run again: every step
# converges, and services restart only when their configuration changed.
#
# `provision.sh --builder` prepares a build host instead (CodeBuild, or the local builder
# container): the runtimes, the build program and runtimes.json, and nothing that serves an
# app (no identity, log forwarding or metrics; no systemd needed).
#
# Environment (all optional when baking):
#   SLIPWAY_APP, SLIPWAY_ENV, SLIPWAY_BUCKET  which fleet this instance serves
#   SLIPWAY_LOG_DESTINATION   host:port of a remote syslog (Papertrail-style); empty = no forwarding
#   SLIPWAY_LOG_TLS           true to forward over TLS (default false)
#   SLIPWAY_LOG_GROUP         CloudWatch Logs group the app's processes go to (slipway logs); empty = none
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
AGENT_DIR=/home/deploy/lib/slipway
RSYSLOG_FORWARD=/etc/rsyslog.d/60-slipway-forward.conf
RSYSLOG_FILE=/etc/rsyslog.d/61-slipway-file.conf
LOGROTATE_FILE=/etc/logrotate.d/slipway
# One JSON object per line ({"time","process","message"}) that the CloudWatch agent ships.
APP_LOG_DIR=/var/log/slipway
CWAGENT_CONFIG=/opt/aws/amazon-cloudwatch-agent/etc/amazon-cloudwatch-agent.json
CWAGENT_CTL=/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl

log() { echo "provision: $*"; }
die() { echo "provision: ERROR: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (it creates users and writes /etc)"
BUILDER=false
case "${1:-}" in
    "") ;;
    --builder) BUILDER=true ;;
    *) die "unknown argument '$1'; run with no argument (an instance) or --builder (a build host)" ;;
esac

# --- settings -------------------------------------------------------------------------------
APP="${SLIPWAY_APP:-}"
ENV_NAME="${SLIPWAY_ENV:-}"
BUCKET="${SLIPWAY_BUCKET:-}"
LOG_DESTINATION="${SLIPWAY_LOG_DESTINATION:-}"
LOG_TLS="${SLIPWAY_LOG_TLS:-false}"
LOG_GROUP="${SLIPWAY_LOG_GROUP:-}"

if [[ -n "$APP$ENV_NAME$BUCKET" ]]; then
    [[ -n "$BUCKET" ]] || die "SLIPWAY_BUCKET is empty; set it to the release bucket's name"
fi
if [[ -n "$LOG_DESTINATION" ]]; then
    [[ "$LOG_DESTINATION" =~ ^([A-Za-z0-9.-]+):([0-9]{1,5})$ ]] \
        || die "SLIPWAY_LOG_DESTINATION='$LOG_DESTINATION' must be host:port, e.g. logs.papertrailapp.com:12345"
    LOG_HOST="${BASH_REMATCH[1]}"
    LOG_PORT="${BASH_REMATCH[2]}"
    (( LOG_PORT >= 1 && LOG_PORT <= 65535 )) || die "SLIPWAY_LOG_DESTINATION port $LOG_PORT is out of range"
fi
[[ "$LOG_TLS" == true || "$LOG_TLS" == false ]] || die "SLIPWAY_LOG_TLS='$LOG_TLS' must be true or false"
if [[ -n "$LOG_GROUP" ]]; then
    [[ "$LOG_GROUP" =~ ^[-._/#A-Za-z0-9]{1,512}$ ]] \
        || die "SLIPWAY_LOG_GROUP='$LOG_GROUP' is not a CloudWatch Logs group name (letters, digits, . - _ / #)"
fi

# --- packages -------------------------------------------------------------------------------
# shellcheck source=/dev/null
. /etc/os-release
case "${ID:-}" in
    amzn)
        PACKAGES=(python3 python3-boto3 rsyslog rsyslog-gnutls amazon-cloudwatch-agent haproxy)
        if $BUILDER; then PACKAGES=(python3); fi
        # App runtimes: the Python and Node.js lines Amazon Linux 2023 packages side by side
        # (python3.11/3.12/3.13 each with its pip; nodejs20/22, whose commands are node-20 and
        # npm-20 …, each with its npm). python3 itself (3.9) stays the agent's. Not run here:
        # the tests boot Debian 12; names as Amazon Linux 2023's repository spells them. A line
        # an older release of the distribution lacks is skipped (strict=0), not fatal:
        # runtimes.json below lists what was really installed.
        RUNTIME_PACKAGES=(python3.11 python3.11-pip python3.12 python3.12-pip python3.13 python3.13-pip
                          nodejs20 nodejs20-npm nodejs22 nodejs22-npm)
        missing=()
        for package in "${PACKAGES[@]}"; do rpm -q "$package" >/dev/null 2>&1 || missing+=("$package"); done
        if (( ${#missing[@]} )); then log "installing ${missing[*]}"; dnf install -y "${missing[@]}"; fi
        missing=()
        for package in "${RUNTIME_PACKAGES[@]}"; do rpm -q "$package" >/dev/null 2>&1 || missing+=("$package"); done
        if (( ${#missing[@]} )); then
            log "installing runtimes ${missing[*]}"
            dnf install -y --setopt=strict=0 "${missing[@]}"
        fi
        CA_BUNDLE=/etc/pki/tls/certs/ca-bundle.crt
        ;;
    debian)
        # The CloudWatch agent is not packaged for Debian: its config is still written below.
        # App runtimes: Debian 12's python3 (3.11, with pip and venv) and nodejs (18, with npm).
        PACKAGES=(python3 python3-boto3 rsyslog rsyslog-gnutls ca-certificates systemd haproxy
                  python3-pip python3-venv nodejs npm)
        if $BUILDER; then PACKAGES=(python3 ca-certificates python3-pip python3-venv nodejs npm); fi
        missing=()
        for package in "${PACKAGES[@]}"; do
            dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
        done
        if (( ${#missing[@]} )); then
            log "installing ${missing[*]}"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
        fi
        CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
        ;;
    *) die "unsupported distribution '${ID:-unknown}'; use Amazon Linux 2023 or Debian 12" ;;
esac

# install_file SRC DEST MODE: copy only when different; prints "changed" if it wrote.
install_file() {
    if ! cmp -s "$1" "$2" 2>/dev/null; then
        install -D -m "$3" -o root -g root "$1" "$2"
        echo changed
    fi
}

# --- deploy user and program ----------------------------------------------------------------
if ! id deploy >/dev/null 2>&1; then
    log "creating user deploy"
    useradd --system --user-group --home-dir /home/deploy --no-create-home --shell /usr/sbin/nologin deploy
fi
# Root owns the home and everything the agent installs: apps run as deploy and must not be
# able to change the program root runs, nor their own release code.
install -d -m 0755 -o root -g root /home/deploy /home/deploy/bin /home/deploy/apps "$AGENT_DIR"
install_file "$HERE/deploy" "$AGENT_DIR/deploy" 0755 >/dev/null
install_file "$HERE/build" "$AGENT_DIR/build" 0755 >/dev/null
# The agent, the build program, and the release formats they share with the control plane.
for package in slipway_agent slipway_build slipway_release; do
    install -d -m 0755 -o root -g root "$AGENT_DIR/$package"
    for file in "$HERE/$package"/*.py "$HERE/$package"/*.json; do
        [[ -e "$file" ]] || continue
        install_file "$file" "$AGENT_DIR/$package/$(basename "$file")" 0644 >/dev/null
    done
    # Files removed from the image disappear from the instance too.
    for installed in "$AGENT_DIR/$package"/*; do
        [[ -e "$HERE/$package/$(basename "$installed")" ]] || rm -rf "$installed"
    done
done
# Earlier images kept the schema beside the packages.
rm -f "$AGENT_DIR/release.schema.json"
ln -sfn "$AGENT_DIR/deploy" /home/deploy/bin/deploy
ln -sfn "$AGENT_DIR/build" /home/deploy/bin/build
log "deploy program at /home/deploy/bin/deploy, build program at /home/deploy/bin/build"

# --- app runtimes ---------------------------------------------------------------------------
# Run every interpreter installed above; write what works to /etc/slipway/runtimes.json, each
# with a command directory (/opt/slipway/runtimes/<name>-<line>/bin: python, pip … or node,
# npm, npx) that the build and the app's processes get first on PATH, so `python` and `npm`
# are the app's chosen runtime wherever the distribution names them otherwise.
runtimes="$(python3 -I - "$AGENT_DIR" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from slipway_release import runtimes
print(runtimes.provision())
PY
)" || die "could not discover the app runtimes"
log "runtimes: $runtimes"
if $BUILDER; then
    log "done: a build host (/home/deploy/bin/build)"
    exit 0
fi

# --- instance identity ----------------------------------------------------------------------
# App and environment names as the whole platform defines them (slipway_release.names).
name_rule() {  # name_rule app|env NAME: prints nothing if NAME is valid, else the rule it breaks
    python3 -I - "$AGENT_DIR" "$1" "$2" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from slipway_release import names
kind, name = sys.argv[2], sys.argv[3]
if not getattr(names, f"is_{kind}_name")(name):
    print(getattr(names, f"{kind.upper()}_NAME_RULE"))
PY
}
if [[ -n "$APP$ENV_NAME" ]]; then
    rule="$(name_rule app "$APP")"; [[ -z "$rule" ]] || die "SLIPWAY_APP='$APP' must be $rule"
    rule="$(name_rule env "$ENV_NAME")"; [[ -z "$rule" ]] || die "SLIPWAY_ENV='$ENV_NAME' must be $rule"
fi
if [[ -n "$APP" ]]; then
    install -d -m 0755 /etc/slipway
    printf 'SLIPWAY_APP=%s\nSLIPWAY_ENV=%s\nSLIPWAY_BUCKET=%s\n' "$APP" "$ENV_NAME" "$BUCKET" > /etc/slipway/instance.env.new
    mv /etc/slipway/instance.env.new /etc/slipway/instance.env
fi

# --- boot-time repair -----------------------------------------------------------------------
# A crash or reboot in the middle of an activation must not start a release that was never
# health-checked: before any app unit (they order After= it), put back what DEPLOYED names.
if [[ -n "$APP" ]]; then
    recover="$(mktemp)"
    printf '%s\n' "# Written by Slipway image/provision.sh." "[Unit]" \
        "Description=Slipway: repair an activation a crash or reboot interrupted, before the apps start" \
        "[Service]" "Type=oneshot" "ExecStart=/home/deploy/bin/deploy --recover" "TimeoutStartSec=300" \
        "[Install]" "WantedBy=multi-user.target" > "$recover"
    if [[ -n "$(install_file "$recover" /etc/systemd/system/slipway-recover.service 0644)" ]]; then
        systemctl daemon-reload
    fi
    rm -f "$recover"
    systemctl enable --quiet slipway-recover.service
fi

# --- the front ------------------------------------------------------------------------------
# HAProxy between the load balancer and each app's releases (docs/switch.md): the deploy agent
# starts a release beside the serving one and switches the front to it. Our own unit, so the
# distribution's haproxy.service (whose default configuration may listen on an app's port) stays off.
if [[ -n "$APP" ]]; then
    systemctl disable --now --quiet haproxy.service 2>/dev/null || true
    install -d -m 0755 -o root -g root /etc/slipway /etc/slipway/front.d
    front_changed="$(install_file "$HERE/front.cfg" /etc/slipway/front.cfg 0644)"
    front_unit="$(mktemp)"
    printf '%s\n' "# Written by Slipway image/provision.sh." "[Unit]" \
        "Description=Slipway: the front (HAProxy between the load balancer and each app's releases)" \
        "After=network-online.target slipway-recover.service" "Wants=network-online.target" \
        "[Service]" "Type=notify" "RuntimeDirectory=slipway-front" \
        "ExecStartPre=/usr/sbin/haproxy -c -q -f /etc/slipway/front.cfg -f /etc/slipway/front.d" \
        "ExecStart=/usr/sbin/haproxy -Ws -f /etc/slipway/front.cfg -f /etc/slipway/front.d" \
        "ExecReload=/usr/sbin/haproxy -c -q -f /etc/slipway/front.cfg -f /etc/slipway/front.d" \
        "ExecReload=/bin/sh -c 'kill -USR2 \$MAINPID'" "KillMode=mixed" "Restart=always" "RestartSec=1" \
        "[Install]" "WantedBy=multi-user.target" > "$front_unit"
    [[ -n "$(install_file "$front_unit" /etc/systemd/system/slipway-front.service 0644)" ]] && front_changed=changed
    rm -f "$front_unit"
    if [[ -n "$front_changed" ]]; then systemctl daemon-reload; fi
    systemctl enable --quiet slipway-front.service
    if [[ -d /run/systemd/system ]]; then
        if [[ -n "$front_changed" ]]; then systemctl reload-or-restart slipway-front.service; else systemctl start slipway-front.service; fi
    fi
fi

# --- log forwarding -------------------------------------------------------------------------
# journald -> rsyslog -> remote syslog. Only this app's processes (SyslogIdentifier=<app>-<type>,
# release phase included) are forwarded. Without a destination, nothing is.
rsyslog_changed=""
if [[ -n "$APP" && -n "$LOG_DESTINATION" ]]; then
    forward="$(mktemp)"
    {
        echo "# Written by Slipway image/provision.sh: forward $APP's logs to $LOG_DESTINATION."
        if [[ "$LOG_TLS" == true ]]; then
            echo "global(DefaultNetstreamDriverCAFile=\"$CA_BUNDLE\")"
        fi
        echo "if (\$programname startswith \"$APP-\") then {"
        echo "    action(type=\"omfwd\" target=\"$LOG_HOST\" port=\"$LOG_PORT\" protocol=\"tcp\""
        if [[ "$LOG_TLS" == true ]]; then
            echo "           StreamDriver=\"gtls\" StreamDriverMode=\"1\" StreamDriverAuthMode=\"x509/name\""
            echo "           StreamDriverPermittedPeers=\"$LOG_HOST\""
        fi
        echo "           template=\"RSYSLOG_SyslogProtocol23Format\""
        # A slow or absent destination must never block local logging: queue in memory, retry forever.
        echo "           queue.type=\"LinkedList\" queue.size=\"50000\" action.resumeRetryCount=\"-1\")"
        echo "}"
    } > "$forward"
    rsyslog_changed="$(install_file "$forward" "$RSYSLOG_FORWARD" 0644)"
    rm -f "$forward"
elif [[ -e "$RSYSLOG_FORWARD" ]]; then
    rm -f "$RSYSLOG_FORWARD"
    rsyslog_changed=changed
fi
# journald -> rsyslog -> $APP_LOG_DIR/$APP.log (JSON lines) -> the CloudWatch agent -> $LOG_GROUP.
if [[ -n "$APP" && -n "$LOG_GROUP" ]]; then
    install -d -m 0755 "$APP_LOG_DIR"
    to_file="$(mktemp)"
    {
        echo "# Written by Slipway image/provision.sh: $APP's logs as JSON lines, for the CloudWatch agent."
        echo 'template(name="SlipwayJson" type="list" option.jsonf="on") {'
        echo '    property(outname="time" name="timereported" dateFormat="rfc3339" format="jsonf")'
        echo '    property(outname="process" name="programname" format="jsonf")'
        echo '    property(outname="message" name="msg" format="jsonf")'
        echo '}'
        echo "if (\$programname startswith \"$APP-\") then {"
        echo "    action(type=\"omfile\" file=\"$APP_LOG_DIR/$APP.log\" template=\"SlipwayJson\")"
        echo "}"
    } > "$to_file"
    [[ -n "$(install_file "$to_file" "$RSYSLOG_FILE" 0644)" ]] && rsyslog_changed=changed
    rm -f "$to_file"
    rotate="$(mktemp)"
    printf '%s\n' "$APP_LOG_DIR/*.log {" "    daily" "    rotate 3" "    maxsize 100M" "    missingok" \
        "    notifempty" "    postrotate" "        systemctl kill -s HUP rsyslog.service >/dev/null 2>&1 || true" \
        "    endscript" "}" > "$rotate"
    install_file "$rotate" "$LOGROTATE_FILE" 0644 >/dev/null
    rm -f "$rotate"
elif [[ -e "$RSYSLOG_FILE" ]]; then
    rm -f "$RSYSLOG_FILE" "$LOGROTATE_FILE"
    rsyslog_changed=changed
fi
if [[ -n "$rsyslog_changed" ]]; then
    rsyslogd -N1 >/dev/null 2>&1 || die "rsyslog rejects $RSYSLOG_FORWARD; check SLIPWAY_LOG_DESTINATION"
fi
systemctl enable --quiet rsyslog
if [[ -n "$rsyslog_changed" ]] || ! systemctl is-active --quiet rsyslog; then
    systemctl restart rsyslog
    log "rsyslog: ${LOG_DESTINATION:+forwarding $APP-* to $LOG_DESTINATION (tls=$LOG_TLS)}${LOG_DESTINATION:-no forwarding}"
fi

# --- metrics --------------------------------------------------------------------------------
# System metrics (cpu, memory, disk, network) with the host name as a dimension, and StatsD on
# 127.0.0.1:8125 for the app's business metrics.
# With a log group, the agent also ships the app's log file: one stream per app and instance.
cw_config="$(mktemp)"
python3 - "$HERE/cloudwatch-agent.json" "$APP" "$LOG_GROUP" "$APP_LOG_DIR" > "$cw_config" <<'PY'
import json, sys
config_path, app, group, directory = sys.argv[1:]
config = json.load(open(config_path))
if app and group:
    collect = {"file_path": f"{directory}/{app}.log", "log_group_name": group,
               "log_stream_name": f"{app}/{{instance_id}}", "timezone": "UTC"}
    config["logs"] = {"logs_collected": {"files": {"collect_list": [collect]}}}
json.dump(config, sys.stdout, indent=2)
PY
cw_changed="$(install_file "$cw_config" "$CWAGENT_CONFIG" 0644)"
rm -f "$cw_config"
if [[ -x "$CWAGENT_CTL" ]]; then
    if [[ -n "$cw_changed" ]] || ! systemctl is-active --quiet amazon-cloudwatch-agent; then
        "$CWAGENT_CTL" -a fetch-config -m ec2 -s -c "file:$CWAGENT_CONFIG"
        log "cloudwatch agent started"
    fi
else
    log "cloudwatch agent not installed here; config written to $CWAGENT_CONFIG"
fi

log "done${APP:+ for $APP/$ENV_NAME}"
