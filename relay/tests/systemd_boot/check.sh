#!/bin/bash
# Runs as a oneshot unit inside the systemd-nspawn container of systemd_boot.rs, after
# boot: drives relay.service with systemctl and writes what it saw, `key=value` lines
# and the journal, to /var/log/relay-check.log. Powers the container off when done.
exec > /var/log/relay-check.log 2>&1
unit() { systemctl show relay.service --value -p "$1"; }
# Polls (up to 20 s) until relay.service is active with NRestarts=$1.
restarted() {
  for _ in $(seq 1 200); do
    [ "$(unit NRestarts)" = "$1" ] && [ "$(systemctl is-active relay.service)" = active ] && return
    sleep 0.1
  done
}
readyz() {
  exec 3<>/dev/tcp/127.0.0.1/9478 && printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3 && head -1 <&3 | tr -d '\r'
  exec 3<&-
}
# The relay needs an address to relay from: the veth gets one (no DHCP here).
ip link set host0 up
ip addr add 10.123.0.2/24 dev host0

systemctl start relay.service
echo "start=$?"
echo "readyz=$(readyz)"
echo "status=$(unit StatusText)"
pid=$(unit MainPID)
echo "capeff=$(awk '/^CapEff/ {print $2}' /proc/$pid/status)"
echo "nonewprivs=$(awk '/^NoNewPrivs/ {print $2}' /proc/$pid/status)"
echo "seccomp=$(awk '/^Seccomp:/ {print $2}' /proc/$pid/status)"
echo "pins=$(ls /sys/fs/bpf/relay/$RELAY_INSTANCE | tr '\n' ' ')"
echo "xdp=$(ip -o link show host0 | grep -o 'xdp[a-z]*' | head -1)"

systemctl restart relay.service
echo "restart=$?"
echo "adopted=$(journalctl -u relay.service -o cat | grep -c 'adopting the data plane')"

systemctl kill -s SIGKILL relay.service
restarted 1
echo "after_kill=$(unit NRestarts) $(systemctl is-active relay.service)"

# A process that stops answering: the watchdog kills it, Restart= brings it back.
systemctl kill -s SIGSTOP relay.service
restarted 2
echo "after_stop=$(unit NRestarts) $(systemctl is-active relay.service)"
echo "watchdog_timeouts=$(journalctl -u relay.service -o cat | grep -c 'Watchdog timeout')"

systemctl stop relay.service
echo "stop=$? $(unit Result)"
echo "pinned_after_stop=$(ls /sys/fs/bpf/relay/$RELAY_INSTANCE | grep -c link-host0)"
relay down --instance "$RELAY_INSTANCE" --state-dir /var/lib/relay > /dev/null
echo "down=$?"

systemctl start relay-tune.service
echo "tune=$? $(systemctl show relay-tune.service --value -p Result)"
echo "== journal"
journalctl -u relay.service -u relay-tune.service --no-pager -o short-monotonic
echo "== done"
systemctl poweroff
