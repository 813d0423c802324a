#!/bin/sh
# The Debian package under systemd, run by `cargo xtask vm-test` inside the
# stock-kernel VM with systemd as PID 1 (see xtask/src/vm.rs). Installs
# $DEB1, checks the service as an administrator and a user meet it, then
# upgrades to $DEB2, removes and purges. One line per step; the first
# failure stops the script with the daemon's journal.
set -eu
export DEBIAN_FRONTEND=noninteractive PAGER=cat SYSTEMD_PAGER=cat MANWIDTH=80
cd /root/vm
holders=""
# Holders write nothing to the output port (it opens once at a time: a
# straggler would keep the exit status from getting out) and are waited for.
cleanup() { [ -z "$holders" ] || { kill $holders 2>/dev/null; wait; } || true; }
trap cleanup EXIT
step() { echo "== $*"; }
fail() {
    echo "FAIL: $*"
    journalctl -u unrm --no-pager -n 60 || true
    exit 1
}
# wait_for WHAT COMMAND...: until COMMAND succeeds, at most 120 s.
wait_for() {
    what=$1; shift; tries=0
    until "$@" > /dev/null 2>&1; do
        tries=$((tries + 1)); [ $tries -le 1200 ] || fail "timed out waiting for $what"
        sleep 0.1
    done
}
apt_get() { apt-get -y -q -o Dpkg::Options::=--force-confold "$@" > apt.log 2>&1 || { cat apt.log; fail "apt-get $*"; }; }
main_pid() { systemctl show -p MainPID --value unrm; }
restarts() { systemctl show -p NRestarts --value unrm; }
is_active() { [ "$(systemctl is-active unrm)" = active ]; }
# json EXPR: evaluates EXPR on the JSON document on stdin (as `j`).
json() { python3 -c "import json, sys; j = json.load(sys.stdin); print($1)"; }
record_of() { unrm list --json --status held --path "$1" | json 'j[0]["id"] if j else ""'; }
has_record() { [ -n "$(record_of "$1")" ]; }
status_of() { unrm show --json "$1" | json 'j["status"]'; }
# hold FILE [USER]: a process that holds FILE open, started and holding
# when this returns.
hold() {
    rm -f "$1.held"
    if [ $# -gt 1 ]; then
        runuser -u "$2" -- sh -c 'exec 3< "$1"; touch "$1.held"; exec sleep 600' sh "$1" > /dev/null 2>&1 &
    else
        sh -c 'exec 3< "$1"; touch "$1.held"; exec sleep 600' sh "$1" > /dev/null 2>&1 &
    fi
    holders="$holders $!"
    wait_for "a holder of $1" test -e "$1.held"
}

# The guest's root is an overlay whose upper layer is mounted nowhere the
# daemon can see (a machine's root is a real filesystem): the files live
# on an ext4 of their own, mounted at /home.
truncate -s 128M /root/home.img
mkfs.ext4 -q /root/home.img
mount -o loop /root/home.img /home
mkdir -m 700 /home/root
R=/home/root

step "apt install $DEB1: the service comes up active, in the fentry tier"
apt_get install "./$DEB1"
is_active || fail "unrm.service is $(systemctl is-active unrm) after install"
systemctl is-enabled unrm | grep -qx enabled || fail "unrm.service is not enabled"
tier=$(unrm status --json | json 'j["probes"]["tier"]')
[ "$tier" = fentry ] || fail "the $tier tier, not fentry"
systemctl show -p StatusText --value unrm | grep -q fentry || fail "STATUS= does not name the tier"

step "root: sleep < f & rm f; unrm restore"
echo precious > $R/f
hold $R/f
rm $R/f
wait_for "a held record of $R/f" has_record $R/f
held=$(record_of $R/f)
[ "$(unrm show --json $held | json 'j["path_resolved"]')" = True ] || { unrm show --json $held; journalctl -u unrm --no-pager | grep -v aya | tail -40; fail "record $held's path is not verified"; }
unrm restore --path $R/f
[ "$(cat $R/f)" = precious ] || fail "root's restore brought back '$(cat $R/f)'"

step "a second user: the same, and root's record stays out of sight"
id -u unrmuser > /dev/null 2>&1 || useradd -m unrmuser
as_user() { runuser -u unrmuser -- sh -c "cd /home/unrmuser && $1"; }
as_user 'echo mine > g'
hold /home/unrmuser/g unrmuser
as_user 'rm g'
wait_for "the user's held record" as_user 'unrm list --json --status held --path g | grep -q /home/unrmuser/g'
as_user 'unrm restore --path g'
[ "$(cat /home/unrmuser/g)" = mine ] || fail "the user's restore"
as_user 'unrm list --json --limit 0' | grep -q "$R/f" && fail "the user sees root's record"
as_user "unrm show $held" > /dev/null 2>&1 && fail "the user may show root's record"

step "unrm protect: a file nobody held comes back, and the tree outlives a restart"
as_user 'mkdir -p tree && echo guarded > tree/p && unrm protect tree' | grep -q "protected /home/unrmuser/tree: 1 files" || fail "the user's unrm protect"
as_user 'rm tree/p'
wait_for "the protected file captured" as_user 'unrm list --json --status captured --path tree/p | grep -q /home/unrmuser/tree/p'
as_user 'unrm restore --path tree/p --to p.back'
[ "$(cat /home/unrmuser/p.back)" = guarded ] || fail "the protected file's restore"
systemctl restart unrm
is_active || fail "not active after a restart"
wait_for "the tree protected again" sh -c "runuser -u unrmuser -- unrm protect --list --json | grep -q '\"state\": \"protected\"'"
as_user 'unrm unprotect tree' | grep -q "unprotected /home/unrmuser/tree" || fail "the user's unprotect"

step "systemctl reload: the new policy applies"
mkdir -p $R/excluded
sed -i "1i exclude = [\"$R/excluded/**\"]" /etc/unrm.toml
systemctl reload unrm
wait_for "the reload in the journal" sh -c 'journalctl -u unrm --no-pager | grep -q "policy reloaded"'
echo x > $R/excluded/e
hold $R/excluded/e
rm $R/excluded/e
echo y > $R/sentinel
hold $R/sentinel
rm $R/sentinel
wait_for "the sentinel's record" has_record $R/sentinel
unrm list --json --limit 0 | grep -q $R/excluded && fail "an excluded path was recorded after the reload"

step "systemctl kill -s KILL: restarted, held records kept"
before=$(main_pid)
systemctl kill -s KILL unrm
wait_for "a restart" sh -c "[ \"\$(systemctl show -p MainPID --value unrm)\" != $before ] && [ \"\$(systemctl is-active unrm)\" = active ]"
[ "$(restarts)" -ge 1 ] || fail "NRestarts is $(restarts)"
[ "$(status_of "$held")" = held ] || fail "record $held is $(status_of "$held") after the restart"
unrm restore "$held" --to $R/f.again
cmp $R/f $R/f.again || fail "restore after the restart"

step "apt install $DEB2 (upgrade): restarted, records kept"
before=$(main_pid)
apt_get install "./$DEB2"
dpkg-query -W -f '${Version}' unrm | grep -q -- "-2$" || fail "the upgrade did not take"
is_active || fail "not active after the upgrade"
[ "$(main_pid)" != "$before" ] || fail "the upgrade did not restart the daemon"
[ "$(status_of "$held")" = held ] || fail "record $held is $(status_of "$held") after the upgrade"
grep -qF "exclude = [\"$R/excluded" /etc/unrm.toml || fail "the upgrade replaced the edited config"

step "journalctl -o json: structured fields"
journalctl -u unrm -o json --no-pager > journal.json
for field in UNRM_RECORD UNRM_PATH UNRM_STATUS UNRM_TIER; do
    grep -q "\"$field\"" journal.json || fail "no $field in the journal"
done
grep -q "\"UNRM_RECORD\":\"$held\"" journal.json || fail "no journal entry for record $held"

step "the event log under the unit"
ev=/var/log/unrm/events.jsonl
[ "$(stat -c %a:%U "$ev")" = 640:root ] || fail "$ev is $(stat -c %a:%U "$ev"), not 640:root"
grep -q "\"event\":\"deleted\".*\"id\":$held," "$ev" || fail "no deletion event of record $held in $ev"

step "the events to the journal instead: [events] to = \"journal\""
sed -i 's/^#to = "file"/to = "journal"/' /etc/unrm.toml
grep -qx 'to = "journal"' /etc/unrm.toml || fail "no [events] to key to set in /etc/unrm.toml"
systemctl restart unrm
echo j > $R/j
hold $R/j
rm $R/j
wait_for "a held record of $R/j" has_record $R/j
jid=$(record_of $R/j)
wait_for "record $jid's event in the journal" sh -c "journalctl -u unrm -o cat --no-pager | grep -q '\"schema\":1.*\"record\":{\"id\":$jid,'"
grep -q "\"id\":$jid," "$ev" && fail "record $jid's event went to the file too"

step "man pages and completions"
man unrm | grep -q restore || fail "man unrm"
man 5 unrm.toml | grep -q max_file_size || fail "man 5 unrm.toml"
man unrm-restore | grep -q -- --path || fail "man unrm-restore"
bash -c '. /usr/share/bash-completion/completions/unrm && complete -p unrm' | grep -q unrm || fail "bash completion"

step "exposure"
systemd-analyze security unrm.service --no-pager | tail -1

step "apt remove: stopped, store kept; purge: store gone"
apt_get remove unrm
is_active && fail "still active after removal"
[ -d /var/lib/unrm ] || fail "removal took the store"
apt_get purge unrm
[ -e /var/lib/unrm ] && fail "purge left /var/lib/unrm"
[ -e /var/log/unrm ] && fail "purge left /var/log/unrm"
echo "package: all steps passed"
