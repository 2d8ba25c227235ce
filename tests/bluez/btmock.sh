#!/usr/bin/env bash
# Private BlueZ mock for btleplug tests: private dbus-daemon + python-dbusmock bluez5 (+AddBleDevice).
# Every command takes the state dir first; the bus is unix:path=<dir>/bus.
#   btmock.sh start <dir>                       -> prints DBUS_SYSTEM_BUS_ADDRESS value; bus + mock, waits for org.bluez
#   btmock.sh adapter <dir> [hci0] [alias]       -> AddAdapter (Powered=true)
#   btmock.sh add-device <dir> <MAC> <name> [rssi=-60] [uuid,uuid,...] [mfrid:hexbytes]   e.g. 0x0059:0102ab
#   btmock.sh rssi <dir> <MAC> <rssi>            -> Properties.Set RSSI (emits PropertiesChanged)
#   btmock.sh set-uuids <dir> <MAC> <uuid,...>   -> Properties.Set UUIDs
#   btmock.sh set-mfr <dir> <MAC> <id> <hexbytes> -> Properties.Set ManufacturerData a{qv}
#   btmock.sh remove-device <dir> <MAC>          -> Adapter1.RemoveDevice (emits InterfacesRemoved)
#   btmock.sh remove-adapter <dir> [hci0]        -> Mock.RemoveAdapterWithDevices
#   btmock.sh kill-mock <dir> | start-mock <dir> -> stop / (re)start only the BlueZ mock (bus stays up)
#   btmock.sh stop <dir>                         -> kill mock + bus, remove socket
# BTMOCK_SYSTEM_BUS=1 at start: the bus admits every user the host knows, as a system bus
# does (its policy then decides per destination), not only its owner, and listens at
# <dir>/run-dbus/system_bus_socket too: a directory to mount where a container expects
# the host's /run/dbus.
set -euo pipefail
PY=${BTMOCK_PYTHON:-/usr/bin/python3}          # Debian python3-dbusmock lives here (not pyenv's python)
HERE=$(cd "$(dirname "$0")" && pwd)
TEMPLATE=${BTMOCK_TEMPLATE:-$HERE/bluez5_ble.py}
cmd=${1:?cmd}; D=${2:?state dir}; shift 2
export DBUS_SYSTEM_BUS_ADDRESS="unix:path=$D/bus"
HCI=hci0
devpath() { echo "/org/bluez/$HCI/dev_$(echo "$1" | tr ':a-f' '_A-F')"; }
call() { gdbus call --system --dest org.bluez "$@" >/dev/null; }
has_bluez() { gdbus call --system --dest org.freedesktop.DBus --object-path /org/freedesktop/DBus \
                --method org.freedesktop.DBus.NameHasOwner org.bluez 2>/dev/null | grep -q true; }
bytes() { local h=${1#0x} out="" i; for ((i=0;i<${#h};i+=2)); do out+="${out:+, }byte 0x${h:i:2}"; done; echo "[$out]"; }
uuids() { local IFS=, u out=""; for u in $1; do [ -n "$u" ] && out+="${out:+, }'$u'"; done; echo "@as [$out]"; }
start_mock() {
  "$PY" -m dbusmock --system --template "$TEMPLATE" >>"$D/mock.log" 2>&1 &
  echo $! >"$D/mock.pid"
  gdbus wait --system --timeout 10 org.bluez || { echo "mock did not appear; see $D/mock.log" >&2; exit 1; }
}
kill_mock() {
  [ -f "$D/mock.pid" ] && kill "$(cat "$D/mock.pid")" 2>/dev/null || true
  rm -f "$D/mock.pid"
  for _ in $(seq 100); do has_bluez || return 0; sleep 0.05; done; echo "org.bluez still owned" >&2; exit 1
}
case $cmd in
  start)
    mkdir -p "$D"; rm -f "$D/bus"
    if [ -n "${BTMOCK_SYSTEM_BUS:-}" ]; then
      mkdir -p "$D/run-dbus"; chmod 0755 "$D" "$D/run-dbus"
      cat >"$D/bus.conf" <<CONF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path=$D/bus</listen>
  <listen>unix:path=$D/run-dbus/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
</busconfig>
CONF
      dbus-daemon --config-file="$D/bus.conf" --nofork --nopidfile >"$D/daemon.log" 2>&1 &
    else
      dbus-daemon --session --address="unix:path=$D/bus" --nofork --nopidfile >"$D/daemon.log" 2>&1 &
    fi
    echo $! >"$D/daemon.pid"
    for _ in $(seq 100); do [ -S "$D/bus" ] && break; sleep 0.05; done
    [ -S "$D/bus" ] || { echo "dbus-daemon did not start" >&2; exit 1; }
    start_mock; echo "$DBUS_SYSTEM_BUS_ADDRESS" ;;
  start-mock) start_mock ;;
  kill-mock) kill_mock ;;
  adapter) HCI=${1:-hci0}; call --object-path /org/bluez --method org.bluez.Mock.AddAdapter "$HCI" "${2:-cloud4iot-gw}" ;;
  add-device)
    mac=$1 name=$2 rssi=${3:--60} u=${4:-} m=${5:-}
    mfr="@a{qay} {}"; [ -n "$m" ] && mfr="{uint16 ${m%%:*}: $(bytes "${m#*:}")}"
    call --object-path /org/bluez --method org.bluez.Mock.AddBleDevice "$HCI" "$mac" "$name" "@n $rssi" "$(uuids "$u")" "$mfr" ;;
  rssi) call --object-path "$(devpath "$1")" --method org.freedesktop.DBus.Properties.Set org.bluez.Device1 RSSI "<int16 $2>" ;;
  set-uuids) call --object-path "$(devpath "$1")" --method org.freedesktop.DBus.Properties.Set org.bluez.Device1 UUIDs "<$(uuids "$2")>" ;;
  set-mfr) call --object-path "$(devpath "$1")" --method org.freedesktop.DBus.Properties.Set org.bluez.Device1 ManufacturerData "<@a{qv} {uint16 $2: <$(bytes "$3")>}>" ;;
  remove-device) call --object-path "/org/bluez/$HCI" --method org.bluez.Adapter1.RemoveDevice "$(devpath "$1")" ;;
  remove-adapter) call --object-path /org/bluez --method org.bluez.Mock.RemoveAdapterWithDevices "${1:-hci0}" ;;
  stop)
    kill_mock || true
    [ -f "$D/daemon.pid" ] && kill "$(cat "$D/daemon.pid")" 2>/dev/null || true
    rm -f "$D/daemon.pid" "$D/bus" "$D/run-dbus/system_bus_socket" ;;
  *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
