#!/usr/bin/env bash
# Installs what maxlofs's tests and demo need on Debian (run as root, or with sudo available).
set -euo pipefail
need=()
command -v fusermount3 >/dev/null || need+=(fuse3)
command -v rsync >/dev/null || need+=(rsync)
command -v vim >/dev/null || need+=(vim-tiny)
command -v setfattr >/dev/null || need+=(attr)
command -v curl >/dev/null || need+=(curl)
command -v bindfs >/dev/null || need+=(bindfs)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
