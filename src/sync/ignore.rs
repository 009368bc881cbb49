//! Which names stay local: the one matcher for ignore patterns.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use std::path::Path;

/// Editor and desktop temp files that never reach the service unless asked.
pub const DEFAULT_IGNORES: &[&str] = &[
    ".*.swp",
    ".*.swx",
    "*~",
    ".#*",
    "4913",
    ".goutputstream-*",
    "~$*",
];

pub struct IgnoreRules {
    set: GlobSet,
}

impl IgnoreRules {
    /// The defaults plus `extra`. A pattern matches a file's name or its whole relative path.
    pub fn new(extra: &[String]) -> anyhow::Result<Self> {
        let mut builder = GlobSetBuilder::new();
        for pattern in DEFAULT_IGNORES
            .iter()
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
        })
    }

    pub fn is_ignored(&self, relative: &Path) -> bool {
        self.set.is_match(relative)
            || relative
                .file_name()
                .is_some_and(|name| self.set.is_match(Path::new(name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_cover_editor_temp_files() {
        let rules = IgnoreRules::new(&[]).unwrap();
        for name in [
            "d/.a.txt.swp",
            ".b.swx",
            "c.txt~",
            ".#lock",
            "x/4913",
            ".goutputstream-ABC",
            "~$report.docx",
        ] {
            assert!(rules.is_ignored(Path::new(name)), "{name}");
        }
        for name in ["a.txt", "swp", "49134", "dir~x/file.jpg", "~$dir/file.jpg"] {
            assert!(!rules.is_ignored(Path::new(name)), "{name}");
        }
    }

    #[test]
    fn extra_patterns_match_names_and_paths() {
        let rules = IgnoreRules::new(&["*.tmp".into(), "cache/**".into()]).unwrap();
        assert!(rules.is_ignored(Path::new("a/b.tmp")));
        assert!(rules.is_ignored(Path::new("cache/x/y.jpg")));
        assert!(!rules.is_ignored(Path::new("photos/cache.jpg")));
        assert!(IgnoreRules::new(&["[".into()]).is_err());
    }
}
