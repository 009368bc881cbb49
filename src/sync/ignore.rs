//! Which names stay local: the one matcher for ignore rules.
//!
//! The defaults follow the conventions of the tools that make the names (lock files, temp files,
//! partial downloads, the trash); each has a short name so that a mount can drop it
//! (`--no-default-ignore NAME`). docs/semantics.md lists them with their tools.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::path::Path;

/// One default rule: what it is called, whose convention it follows, and what it matches.
pub struct DefaultIgnore {
    pub name: &'static str,
    pub tool: &'static str,
    matcher: Matcher,
}

enum Matcher {
    Globs(&'static [&'static str]),
    /// Names a glob cannot tell from a user's own (`is_rsync_temp`, `is_libreoffice_temp`).
    Name(fn(&str) -> bool),
}

/// `--no-default-ignore all` drops every default.
pub const ALL_DEFAULTS: &str = "all";

pub const DEFAULT_IGNORES: &[DefaultIgnore] = &[
    DefaultIgnore {
        name: "libreoffice-lock",
        tool: "LibreOffice and OpenOffice lock files, .~lock.NAME#",
        matcher: Matcher::Globs(&[".~lock.*#"]),
    },
    DefaultIgnore {
        name: "libreoffice-temp",
        tool: "LibreOffice's safe-save temp files, luPIDXXXXXX.tmp",
        matcher: Matcher::Name(is_libreoffice_temp),
    },
    DefaultIgnore {
        name: "msoffice-lock",
        tool: "Microsoft Office owner files, ~$NAME",
        matcher: Matcher::Globs(&["~$*"]),
    },
    DefaultIgnore {
        name: "msoffice-temp",
        tool: "Microsoft Office temp files, ~WRL0001.tmp",
        matcher: Matcher::Globs(&["~*.tmp"]),
    },
    DefaultIgnore {
        name: "emacs-autosave",
        tool: "Emacs auto-save files, #NAME#",
        matcher: Matcher::Globs(&["#*#"]),
    },
    DefaultIgnore {
        name: "emacs-lock",
        tool: "Emacs lock links, .#NAME",
        matcher: Matcher::Globs(&[".#*"]),
    },
    DefaultIgnore {
        name: "vim-swap",
        tool: "Vim swap files, .NAME.swp (.swo, ..., .swa; .swx)",
        matcher: Matcher::Globs(&[".*.sw?"]),
    },
    DefaultIgnore {
        name: "vim-write-test",
        tool: "Vim's probe for a writable folder, 4913",
        matcher: Matcher::Globs(&["4913"]),
    },
    DefaultIgnore {
        name: "backup",
        tool: "backup copies, NAME~ (Emacs, Vim, gedit, Kate, nano)",
        matcher: Matcher::Globs(&["*~"]),
    },
    DefaultIgnore {
        name: "kate-swap",
        tool: "Kate and KWrite swap files, .NAME.kate-swp",
        matcher: Matcher::Globs(&["*.kate-swp"]),
    },
    DefaultIgnore {
        name: "glib-temp",
        tool: "GLib's safe-save temp files, .goutputstream-XXXXXX (gedit, GNOME apps, gio)",
        matcher: Matcher::Globs(&[".goutputstream-*"]),
    },
    DefaultIgnore {
        name: "partial-download",
        tool: "downloads in progress: NAME.part (Firefox, KDE), NAME.crdownload (Chrome)",
        matcher: Matcher::Globs(&["*.part", "*.crdownload"]),
    },
    DefaultIgnore {
        name: "rsync-temp",
        tool: "rsync's temp files, .NAME.XXXXXX",
        matcher: Matcher::Name(is_rsync_temp),
    },
    DefaultIgnore {
        name: "rsync-partial-dir",
        tool: "rsync --delay-updates, a .~tmp~ folder",
        matcher: Matcher::Globs(&["**/.~tmp~/**"]),
    },
    DefaultIgnore {
        name: "fuse-hidden",
        tool: "libfuse's open-but-deleted files, .fuse_hiddenXXXX",
        matcher: Matcher::Globs(&[".fuse_hidden*"]),
    },
    DefaultIgnore {
        name: "nfs-silly-rename",
        tool: "the NFS client's open-but-deleted files, .nfsXXXX",
        matcher: Matcher::Globs(&[".nfs*"]),
    },
    DefaultIgnore {
        name: "trash",
        tool: "the freedesktop.org trash at the mount's top, .Trash/ and .Trash-UID/",
        matcher: Matcher::Globs(&[".Trash/**", ".Trash-*/**"]),
    },
];

pub struct IgnoreRules {
    set: GlobSet,
    name_tests: Vec<fn(&str) -> bool>,
}

impl IgnoreRules {
    /// The defaults but those named in `dropped` (or all of them, for `all`), plus `extra`.
    /// A glob matches a file's name, or its whole path relative to the mount.
    pub fn new(extra: &[String], dropped: &[String]) -> anyhow::Result<Self> {
        if let Some(unknown) = dropped
            .iter()
            .find(|name| *name != ALL_DEFAULTS && !DEFAULT_IGNORES.iter().any(|d| d.name == *name))
        {
            anyhow::bail!("no default ignore rule is called {unknown:?}");
        }
        let kept: Vec<&DefaultIgnore> = if dropped.iter().any(|name| name == ALL_DEFAULTS) {
            Vec::new()
        } else {
            DEFAULT_IGNORES
                .iter()
                .filter(|default| !dropped.iter().any(|name| name == default.name))
                .collect()
        };
        let default_globs = kept.iter().flat_map(|default| match default.matcher {
            Matcher::Globs(globs) => globs,
            Matcher::Name(_) => &[][..],
        });
        let mut builder = GlobSetBuilder::new();
        for pattern in default_globs
            .copied()
            .chain(extra.iter().map(String::as_str))
        {
            // `*` stays within one name; `**` crosses directories.
            let glob = GlobBuilder::new(pattern)
                .literal_separator(true)
                .build()
                .map_err(|err| anyhow::anyhow!("bad --ignore pattern {pattern:?}: {err}"))?;
            builder.add(glob);
        }
        Ok(IgnoreRules {
            set: builder.build()?,
            name_tests: kept
                .iter()
                .filter_map(|default| match default.matcher {
                    Matcher::Name(test) => Some(test),
                    Matcher::Globs(_) => None,
                })
                .collect(),
        })
    }

    pub fn is_ignored(&self, relative: &Path) -> bool {
        let name = relative.file_name().map(Path::new);
        // A restore's temp file is maxlofs' own, whatever rules were dropped.
        let restoring = name
            .and_then(Path::to_str)
            .is_some_and(super::restore::is_restore_temp);
        restoring
            || self.set.is_match(relative)
            || name.is_some_and(|name| {
                self.set.is_match(name)
                    || name
                        .to_str()
                        .is_some_and(|name| self.name_tests.iter().any(|test| test(name)))
            })
    }
}

/// rsync writes a file as `.NAME.XXXXXX` (mkstemp: six characters from [A-Za-z0-9]; no second dot
/// before a NAME that starts with one) and renames it when complete. A glob `.*.??????` would also match a user's `.photo.backup`, so the six must
/// also mix at least two of lowercase, uppercase and digits, as all but about 1 in 90 random ones
/// do. The rare temp name that does not is treated as a file: sent only if it outlives the settle
/// window, and deleted when rsync renames it.
fn is_rsync_temp(name: &str) -> bool {
    let Some((stem, random)) = name
        .strip_prefix('.')
        .and_then(|rest| rest.rsplit_once('.'))
    else {
        return false;
    };
    let classes: [fn(&u8) -> bool; 3] = [
        u8::is_ascii_lowercase,
        u8::is_ascii_uppercase,
        u8::is_ascii_digit,
    ];
    let mixed = classes
        .iter()
        .filter(|class| random.bytes().any(|byte| class(&byte)))
        .count()
        >= 2;
    !stem.is_empty()
        && random.len() == 6
        && random.bytes().all(|byte| byte.is_ascii_alphanumeric())
        && mixed
}

/// LibreOffice saves a document by writing `lu` + its process id + up to six characters of a
/// base-36 counter (`[0-9a-z]`) + `.tmp` beside it, then renaming that over the document
/// (unotools' tempfile.cxx: the "eye catcher" `lu` and the pid, then `UniqueTokens`). A user's
/// `lunch.tmp` or `lu.tmp` is not such a name: after `lu` come digits, and at most the last six
/// characters may be letters.
fn is_libreoffice_temp(name: &str) -> bool {
    let Some(middle) = name
        .strip_prefix("lu")
        .and_then(|rest| rest.strip_suffix(".tmp"))
    else {
        return false;
    };
    const COUNTER_MAX: usize = 6;
    let pid_at_least = middle.len().saturating_sub(COUNTER_MAX).max(1);
    middle.len() >= 2
        && middle
            .bytes()
            .all(|byte| byte.is_ascii_digit() || byte.is_ascii_lowercase())
        && middle
            .bytes()
            .take(pid_at_least)
            .all(|byte| byte.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignored_by(rules: &IgnoreRules, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .filter(|name| rules.is_ignored(Path::new(name)))
            .map(|name| name.to_string())
            .collect()
    }

    #[test]
    fn defaults_cover_the_tools_temp_and_lock_files() {
        let rules = IgnoreRules::new(&[], &[]).unwrap();
        let temp = [
            "docs/.~lock.report.odt#",
            "docs/lu12345.tmp",
            "lu4123d.tmp",
            "lu40321a9z01x.tmp",
            "lu1234567abcdef.tmp",
            "~$report.docx",
            "~WRL0001.tmp",
            "#notes.txt#",
            ".#notes.txt",
            "d/.a.txt.swp",
            ".a.txt.swo",
            ".b.swx",
            "x/4913",
            "c.txt~",
            ".notes.txt.kate-swp",
            ".goutputstream-ABC123",
            "dl/movie.mp4.part",
            "dl/movie.mp4.crdownload",
            "photos/.IMG_1.jpg.a9Xk2Q",
            "photos/.IMG_1.jpg.ab12cd",
            "photos/.hidden.jpg.QWERT1",
            "photos/.~tmp~/IMG_1.jpg",
            ".~tmp~/IMG_1.jpg",
            ".fuse_hidden0000001a00000001",
            "a/.nfs000000000123456700000001",
            ".Trash-1000/files/a.jpg",
            ".Trash-0/info/a.jpg.trashinfo",
            ".Trash/1000/files/a.jpg",
        ];
        assert_eq!(ignored_by(&rules, &temp), temp);
        let kept = [
            "a.txt",
            "swp",
            "49134",
            "dir~x/file.jpg",
            "~$dir/file.jpg",
            ".~lock.report.odt",
            "lunch.tmp",
            "lu.tmp",
            "lu1.tmp",
            "lu12abcdefg.tmp",
            "lu12A3.tmp",
            "lu12345.tmp.odt",
            "xlu12345.tmp",
            "photo.part1.rar",
            // Hidden names with a six-letter suffix are a user's, not rsync's.
            ".photo.backup",
            ".notes.BACKUP",
            ".dump.202611",
            ".IMG_1.jpg.a9Xk2",
            "..a9Xk2Q",
            ".photo.a9Xk-Q",
            "photo.jpg.a9Xk2Q",
            // The trash is the one at the mount's top.
            "photos/.Trash-1000/files/a.jpg",
            ".Trash-1000",
            ".Trashes/a.jpg",
        ];
        assert_eq!(ignored_by(&rules, &kept), Vec::<String>::new());
    }

    #[test]
    fn defaults_are_dropped_by_name_or_all_at_once() {
        let names = [
            "a/.Trash-0/files/x",
            ".Trash-0/files/x",
            "m.part",
            ".a.jpg.a9Xk2Q",
        ];
        let rules = IgnoreRules::new(&[], &["trash".into(), "rsync-temp".into()]).unwrap();
        assert_eq!(ignored_by(&rules, &names), ["m.part"]);
        let rules = IgnoreRules::new(&["*.tmp".into()], &[ALL_DEFAULTS.into()]).unwrap();
        assert_eq!(
            ignored_by(&rules, &[".#a", "~$b", "c~", "d.tmp"]),
            ["d.tmp"]
        );
        assert!(IgnoreRules::new(&[], &["no-such-rule".into()]).is_err());
    }

    #[test]
    fn extra_patterns_match_names_and_paths() {
        let rules = IgnoreRules::new(&["*.tmp".into(), "cache/**".into()], &[]).unwrap();
        assert!(rules.is_ignored(Path::new("a/b.tmp")));
        assert!(rules.is_ignored(Path::new("cache/x/y.jpg")));
        assert!(!rules.is_ignored(Path::new("photos/cache.jpg")));
        assert!(IgnoreRules::new(&["[".into()], &[]).is_err());
    }

    #[test]
    fn the_semantics_doc_lists_every_default() {
        let doc = include_str!("../../docs/semantics.md");
        for default in DEFAULT_IGNORES {
            assert!(
                doc.contains(&format!("| `{}` |", default.name)),
                "docs/semantics.md does not list the default {:?}",
                default.name
            );
        }
    }
}
