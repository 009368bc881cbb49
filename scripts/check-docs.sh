#!/usr/bin/env bash
# Docs that name code must name code that exists: every `crate::module::Name` path and every
# `file.rs` written in backticks in README.md and docs/*.md is looked up in the tree. A path's
# first word is a crate (maxlofs_api or api, maxlofs_fs or fs, maxlofs_sync or sync,
# maxlofs_emulator or emulator) or a module of the binary (src/NAME.rs); each later word must be
# a module, item or enum variant defined in that crate. docs/design.md's event list holds every
# `Event` the filesystem reports. Run by scripts/test.sh; exits 1 on drift.
set -euo pipefail
cd "$(dirname "$0")/.."
docs=(README.md docs/*.md)
missing=0

crate_dir() {
  case "$1" in
    maxlofs_api | api) echo src/api ;;
    maxlofs_fs | fs) echo src/fs ;;
    maxlofs_sync | sync) echo src/sync ;;
    maxlofs_emulator | emulator) echo src/emulator ;;
    *) [ -f "src/$1.rs" ] && echo "src/$1.rs" ;;
  esac
}

# Whether NAME is defined under WHERE (a crate folder or a file): a module file or folder, an item,
# or an enum variant.
defines() {
  local where=$1 name=$2
  [ -n "$(find "$where" -name "$name.rs" -o -type d -name "$name" | head -1)" ] && return 0
  grep -rqE "(fn|struct|enum|trait|const|static|type|mod|macro_rules!) $name\b|^\s+$name( \{|\(|,|$)" \
    --include='*.rs' "$where"
}

while IFS=: read -r doc ref; do
  path=${ref#\`}
  path=${path%\`}
  path=${path%()}
  IFS=':' read -r -a words <<<"${path//::/:}"
  where=$(crate_dir "${words[0]}") || true
  [ -n "$where" ] || continue # not one of ours (std::, libc::, tokio::, ...)
  for word in "${words[@]:1}"; do
    [[ $word =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    if ! defines "$where" "$word"; then
      echo "$doc: $ref: nothing named $word in $where" >&2
      missing=1
      break
    fi
  done
done < <(grep -oE '`[A-Za-z_][A-Za-z0-9_]*(::[A-Za-z_][A-Za-z0-9_]*)+(\(\))?`' "${docs[@]}" | sort -u)

while IFS=: read -r doc ref; do
  file=${ref//\`/}
  if [ -z "$(find src tests scripts -name "$(basename "$file")" | head -1)" ]; then
    echo "$doc: $ref: no such file" >&2
    missing=1
  fi
done < <(grep -oE '`[A-Za-z0-9_/.-]+\.rs`' "${docs[@]}" | sort -u)

# The data-flow drawing in docs/design.md lists every kind of event the filesystem reports.
variants=$(sed -n '/^pub enum Event {/,/^}/p' src/fs/lib.rs | grep -oE '^    [A-Z][A-Za-z]+' | tr -d ' ')
for variant in $variants; do
  if ! grep -q "\b$variant\b" docs/design.md; then
    echo "docs/design.md: the event list lacks $variant (src/fs/lib.rs, enum Event)" >&2
    missing=1
  fi
done

if [ "$missing" = 1 ]; then
  echo "check-docs: the docs name code that is not there (above)" >&2
  exit 1
fi
echo "check-docs: every code path and file the docs name exists"
