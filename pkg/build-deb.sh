#!/usr/bin/env bash
# Builds target/debian/importlyd_*.deb from a release build: the packaged unit (the repo's
# unit with the Debian paths and the static `importlyd` user), the man page and the shell
# completions are generated into target/deb-assets first, then cargo-deb packs them as
# listed in Cargo.toml's [package.metadata.deb].
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/importlyd
cargo build --release --locked --bin importlyd   # a no-op when up to date
out=target/deb-assets
rm -rf "$out" && mkdir -p "$out"

# The package installs to /usr/bin and runs as the static system user from sysusers.d,
# which owns /var/lib/importlyd; the sandbox is the repo unit's, line for line.
sed -e 's#/usr/local/bin/importlyd#/usr/bin/importlyd#' \
    -e 's#/usr/local/share/doc/importlyd#/usr/share/doc/importlyd#' \
    -e 's#^DynamicUser=yes#User=importlyd\nGroup=importlyd#' \
    systemd/importlyd.service > "$out/importlyd.service"
# The packaged config keeps the database in the state directory by an absolute path, so
# operator commands from a shell open the daemon's database.
sed 's#^path = "importlyd.db"#path = "/var/lib/importlyd/importlyd.db"#' \
    config/importlyd.toml > "$out/importlyd.toml"

"$bin" man | gzip -9n > "$out/importlyd.1.gz"
"$bin" completions bash > "$out/importlyd.bash"
"$bin" completions zsh > "$out/_importlyd"
"$bin" completions fish > "$out/importlyd.fish"

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked
cargo deb --no-build --locked "$@"
