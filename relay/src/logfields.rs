//! The text log format's fields: tracing-subscriber's own formatting, except for string values.
//!
//! tracing-subscriber writes a string field with `str`'s `Debug`, which looks every non-ASCII character up in
//! Unicode's printable and grapheme-extend tables. The audit record carries up to `audit.max_text_bytes` of the
//! answer's text, mostly non-ASCII for Chinese answers, so that lookup was about half the cost of writing a record
//! (`perf record` of the relay at 100 streams, 2026-11-28: the record line 4.9% of the relay's CPU, 2% of it
//! `Debug` escaping). [`TextFields`] writes strings quoted with the escapes that keep a log line one line and
//! unspoofable, and leaves every other character as it is: the same bytes as `Debug` for ASCII and for ordinary
//! text in any script, and for combining marks (Hindi, Thai vowel signs) the characters rather than `\u{…}`.
//! Escaped: `"` and `\`; `\t`, `\r`, `\n`, `\0` as `Debug` writes them; every other control character (C0, DEL,
//! C1), the line and paragraph separators, the zero-width and bidirectional formatting characters and the byte
//! order mark as `\u{…}`.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// The text format's field formatter (`fmt::layer().fmt_fields(TextFields)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TextFields;

impl<'a> MakeVisitor<Writer<'a>> for TextFields {
    type Visitor = TextVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        TextVisitor(DefaultVisitor::new(target, true))
    }
}

/// tracing-subscriber's visitor with string values written by [`Quoted`].
#[derive(Debug)]
pub struct TextVisitor<'a>(DefaultVisitor<'a>);

impl Visit for TextVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.record_str(field, value);
        } else {
            self.0.record_debug(field, &Quoted(value));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.record_error(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.record_debug(field, value);
    }
}

impl VisitOutput<fmt::Result> for TextVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.0.finish()
    }
}

impl VisitFmt for TextVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.0.writer()
    }
}

/// A string in double quotes, escaped as the module says; runs of characters that need no escape are written whole.
pub struct Quoted<'a>(pub &'a str);

impl fmt::Debug for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        f.write_char('"')?;
        let mut from = 0;
        for (i, c) in s.char_indices() {
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\t' => Some("\\t"),
                '\r' => Some("\\r"),
                '\n' => Some("\\n"),
                '\0' => Some("\\0"),
                c if needs_code(c) => None,
                _ => continue,
            };
            f.write_str(&s[from..i])?;
            match short {
                Some(escape) => f.write_str(escape)?,
                None => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            }
            from = i + c.len_utf8();
        }
        f.write_str(&s[from..])?;
        f.write_char('"')
    }
}

/// Characters written as `\u{…}`: controls, and the invisible ones that could make a log line read as something
/// it is not (line breaks in other forms, zero-width characters, bidirectional overrides, the byte order mark).
fn needs_code(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

#[cfg(test)]
mod tests {
    use super::Quoted;

    fn quoted(s: &str) -> String {
        format!("{:?}", Quoted(s))
    }

    #[test]
    fn ordinary_text_reads_as_str_debug_does() {
        for s in [
            "",
            "plain ascii, with \"quotes\" and a \\ backslash",
            "tab\there\r\nnew line\0nul",
            "你好，世界。流式输出的中文答案",
            "emoji 🦀 and accents é ü ñ",
            "\u{1b}[31mred\u{7f}\u{85}",
        ] {
            assert_eq!(quoted(s), format!("{s:?}"), "{s}");
        }
    }

    #[test]
    fn invisible_characters_are_written_as_codes() {
        assert_eq!(quoted("a\u{2028}b"), r#""a\u{2028}b""#);
        assert_eq!(quoted("\u{202e}txt.exe"), r#""\u{202e}txt.exe""#);
        assert_eq!(
            quoted("zero\u{200b}width\u{feff}"),
            r#""zero\u{200b}width\u{feff}""#
        );
    }

    #[test]
    fn combining_marks_stay_characters() {
        // `Debug` writes `e\u{301}` for this; a log reader wants the text.
        assert_eq!(format!("{:?}", "e\u{301}"), r#""e\u{301}""#);
        assert_eq!(quoted("e\u{301}"), "\"e\u{301}\"");
        assert_eq!(quoted("สวัสดี"), "\"สวัสดี\"");
    }
}
