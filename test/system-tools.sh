#!/usr/bin/env bash
# Installs the system tools the fault, CLI and reliability tests use (strace, setpriv, mkfs, GNU time,
# a C compiler), when they are missing and we are root. Runs before `npm test` and in CI.
set -u
need=(strace:strace setpriv:util-linux mount:mount mkfs.ext4:e2fsprogs mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs /usr/bin/time:time
  gcc:gcc setfacl:acl sponge:moreutils hyperfine:hyperfine pgrep:procps)
missing=()
for pair in "${need[@]}"; do
  tool=${pair%%:*}
  command -v "$tool" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-tools: missing ${missing[*]}; not root, so the tests that need them will be skipped" >&2
  exit 0
fi
echo "system-tools: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" libc6-dev >/dev/null
