#!/usr/bin/env bash
# CI: install the built .deb on this machine, check what it installed, run the installed
# binary and verify the installed unit, then purge it and check that nothing is left.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=$(ls -t target/debian/importlyd_*.deb | head -1)
echo "checking $deb"
dpkg-deb --info "$deb" >/dev/null
dpkg -i "$deb"

fail() { echo "deb check: $*" >&2; exit 1; }
for f in /usr/bin/importlyd /etc/importlyd/importlyd.toml \
         /usr/lib/sysusers.d/importlyd.conf /usr/share/man/man1/importlyd.1.gz \
         /usr/share/bash-completion/completions/importlyd \
         /usr/share/zsh/vendor-completions/_importlyd \
         /usr/share/fish/vendor_completions.d/importlyd.fish \
         /usr/share/doc/importlyd/README.md; do
    [ -e "$f" ] || fail "missing $f"
done
unit=$(dpkg -L importlyd | grep '/systemd/system/importlyd.service$' || true)
[ -n "$unit" ] || fail "no unit installed"
dpkg-query -W -f='${Conffiles}\n' importlyd | grep -q /etc/importlyd/importlyd.toml \
    || fail "the config is not a conffile"
getent passwd importlyd >/dev/null || fail "no importlyd system user"
[ "$(stat -c %U /var/lib/importlyd)" = importlyd ] || fail "state directory not owned by importlyd"
grep -q '^ExecStart=/usr/bin/importlyd ' "$unit" || fail "unit does not run /usr/bin/importlyd"
grep -q '^User=importlyd$' "$unit" || fail "unit does not run as importlyd"
zcat /usr/share/man/man1/importlyd.1.gz | grep -q '^\.TH' || fail "man page has no .TH"

/usr/bin/importlyd --version
systemd-analyze verify "$unit"
# The packaged config is valid as installed (migrate creates the database where it says).
/usr/bin/importlyd --config /etc/importlyd/importlyd.toml migrate
[ -f /var/lib/importlyd/importlyd.db ] || fail "migrate did not create the configured database"

dpkg --purge importlyd
for f in /usr/bin/importlyd /etc/importlyd "$unit" /usr/lib/sysusers.d/importlyd.conf \
         /usr/share/man/man1/importlyd.1.gz /var/lib/importlyd; do
    [ ! -e "$f" ] || fail "$f left after purge"
done
echo "deb check: ok"
