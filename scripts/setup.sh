#!/usr/bin/env bash
# Installs what maxlofs's tests and demo need on Debian (run as root, or with sudo available).
set -euo pipefail
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v rsync >/dev/null || need+=(rsync)
command -v git >/dev/null || need+=(git)
command -v vim >/dev/null || need+=(vim-tiny)
command -v setfattr >/dev/null || need+=(attr)
command -v curl >/dev/null || need+=(curl)
command -v bindfs >/dev/null || need+=(bindfs)
command -v python3 >/dev/null || need+=(python3)
# ext4 images whose blocks the scrub tests damage (tests/common/ext4.rs)
{ command -v mkfs.ext4 && command -v debugfs; } >/dev/null || need+=(e2fsprogs)
# gio trash, and gvfsd-trash on a session bus for `gio trash --list/--restore` (tests/names_and_trash.rs)
command -v gio >/dev/null || need+=(libglib2.0-bin)
[ -x /usr/libexec/gvfsd-trash ] || need+=(gvfs gvfs-daemons)
command -v dbus-run-session >/dev/null || need+=(dbus-daemon)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing with apt-get: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
