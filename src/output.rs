//! The one output policy: text from the service, the filesystem or the user's files reaches a
//! terminal or the log only escaped, so that it can neither drive the terminal (escape
//! sequences, OSC title and clipboard writes), nor forge a line, nor hide or reorder what is
//! shown (bidi overrides, zero-width and filler characters). Ordinary text, accents, CJK and
//! emoji included, is shown as is.

use std::fmt;

use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::FormatFields;

/// Whether `c` is shown as an escape: control characters (C0, DEL, C1; escape sequences start
/// with one), line and paragraph separators, bidi controls, and the characters that show
/// nothing (zero-width marks, joiners, fillers, tags, other format characters).
fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // Soft hyphen, combining grapheme joiner, Arabic letter mark.
            '\u{ad}' | '\u{34f}' | '\u{61c}'
            // Hangul fillers, Khmer invisible vowels, Mongolian vowel separator.
            | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}' | '\u{180e}'
            // Zero-width space and joiners, left-to-right and right-to-left marks.
            | '\u{200b}'..='\u{200f}'
            // Line and paragraph separators, bidi embeddings and overrides.
            | '\u{2028}'..='\u{202e}'
            // Word joiner, invisible operators, bidi isolates, deprecated format characters.
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}' | '\u{feff}' | '\u{ffa0}'
            // Interlinear annotation marks.
            | '\u{fff9}'..='\u{fffb}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            // Tag characters.
            | '\u{e0000}'..='\u{e007f}')
}

fn escape_into(out: &mut String, text: &str, backslashes: bool) {
    for c in text.chars() {
        if must_escape(c) || (backslashes && c == '\\') {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
}

/// A value shown alone (a name, a path, a grant, a message in status): the characters above
/// come out as Rust escapes (`\n`, `\u{1b}`, `\u{202e}`), and backslashes as `\\`, so what is
/// shown says exactly what the value holds.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text, true);
    out
}

/// A line made of several parts (an error and its causes, a log event), some of which may be
/// Rust escapes already (names logged with `{:?}`): the same characters are escaped, but
/// backslashes are left alone, so nothing is escaped twice. The line stays one line.
pub fn escaped_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    escape_into(&mut out, text, false);
    out
}

/// An error and its causes, as `maxlofs: ...` prints them: one line, escaped (the service's
/// messages and the user's names are part of it).
pub fn error_line(err: &anyhow::Error) -> String {
    escaped_line(&format!("{err:#}"))
}

/// How the log writes an event's and its spans' fields: as tracing's default does, then
/// `escaped_line`, so that no field (a service's message, a file's name) can put a newline or an
/// escape sequence into the log. The rest of a log line (time, level, target) is ours.
pub struct EscapedFields(DefaultFields);

impl EscapedFields {
    pub fn new() -> EscapedFields {
        EscapedFields(DefaultFields::new())
    }
}

impl Default for EscapedFields {
    fn default() -> Self {
        EscapedFields::new()
    }
}

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut text = String::new();
        self.0.format_fields(Writer::new(&mut text), fields)?;
        writer.write_str(&escaped_line(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_escapes_and_invisible_marks_are_shown_escaped() {
        assert_eq!(
            escaped("a\nb\u{1b}[31m\\c\u{202e}d\u{7f}"),
            r"a\nb\u{1b}[31m\\c\u{202e}d\u{7f}"
        );
        let hostile =
            "\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}]52;c;cHduZWQ=\u{7}\n maxlofs: mounted fine";
        assert_eq!(
            escaped(hostile),
            r"\u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}]52;c;cHduZWQ=\u{7}\n maxlofs: mounted fine"
        );
        for (hidden, shown) in [
            ('\u{85}', r"\u{85}"),
            ('\u{9b}', r"\u{9b}"),
            ('\r', r"\r"),
            ('\t', r"\t"),
            ('\u{2028}', r"\u{2028}"),
            ('\u{2029}', r"\u{2029}"),
            ('\u{200b}', r"\u{200b}"),
            ('\u{200d}', r"\u{200d}"),
            ('\u{2066}', r"\u{2066}"),
            ('\u{61c}', r"\u{61c}"),
            ('\u{feff}', r"\u{feff}"),
            ('\u{3164}', r"\u{3164}"),
            ('\u{115f}', r"\u{115f}"),
            ('\u{ffa0}', r"\u{ffa0}"),
            ('\u{ad}', r"\u{ad}"),
            ('\u{e0041}', r"\u{e0041}"),
            ('\u{e007f}', r"\u{e007f}"),
        ] {
            assert_eq!(escaped(&format!("a{hidden}b")), format!("a{shown}b"));
        }
    }

    #[test]
    fn ordinary_text_is_shown_as_is() {
        for text in [
            "Café \"1\" l'été.jpg",
            "日本語のファイル.png",
            "фото 2024 — копия",
            "🎉📷 party.mov",
            "a\u{a0}b c",
        ] {
            assert_eq!(escaped(text), text);
            assert_eq!(escaped_line(text), text);
        }
    }

    #[test]
    fn a_line_keeps_its_backslashes_and_escapes_the_rest() {
        assert_eq!(
            escaped_line("name \"x\\ny\" refused: bad\nforged\u{1b}[2J"),
            r#"name "x\ny" refused: bad\nforged\u{1b}[2J"#
        );
    }

    #[test]
    fn log_fields_are_escaped_whatever_their_kind() {
        use tracing_subscriber::fmt::MakeWriter;
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl<'a> MakeWriter<'a> for Captured {
            type Writer = Captured;
            fn make_writer(&'a self) -> Captured {
                self.clone()
            }
        }
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields::new())
            .with_ansi(false)
            .with_writer(captured.clone())
            .finish();
        let message = "refused: \u{1b}]0;pwned\u{7}\n maxlofs: mounted fine\u{2028}";
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("look", path = "a\nb\u{202e}");
            let _entered = span.enter();
            tracing::warn!(why = %message, "create failed: {message}");
        });
        let log = String::from_utf8(captured.0.lock().clone()).unwrap();
        assert_eq!(log.matches('\n').count(), 1, "{log:?}");
        assert!(log.ends_with('\n'), "{log:?}");
        for raw in ['\u{1b}', '\u{7}', '\u{2028}', '\u{202e}'] {
            assert!(!log.contains(raw), "{log:?}");
        }
        // (tracing writes ESC in a message as `\x1b` itself, but nothing else.)
        assert!(
            log.contains(r"pwned\x07\n maxlofs: mounted fine\u{2028} why=refused: \u{1b}]0;"),
            "{log:?}"
        );
        assert!(
            log.contains(r"a\nb\u{202e}"),
            "the span's field too: {log:?}"
        );
    }
}
