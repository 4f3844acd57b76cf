//! Text from tools and from the store made safe to print: a tool's stderr in a failure reason,
//! a memory's content or a lesson's fix may hold terminal control sequences (an escape that
//! recolours the terminal or sets its title, a carriage return that overwrites what was printed,
//! a bell) or bidirectional overrides that reorder what is shown. The binary's human output and
//! the permission prompt write them as escapes instead; `--json` output is JSON-escaped already.

use std::borrow::Cow;

/// `text` with every control character (and bidirectional override) written as an escape
/// (`\u{1b}`, `\r`); line breaks and tabs are kept unless `one_line` asks for them escaped too.
pub fn printable(text: &str, one_line: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && (one_line || !matches!(c, '\n' | '\t')))
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            _ if !unsafe_char(c) => shown.push(c),
            '\n' => shown.push_str("\\n"),
            '\r' => shown.push_str("\\r"),
            '\t' => shown.push_str("\\t"),
            other => shown.push_str(&format!("\\u{{{:x}}}", u32::from(other))),
        }
    }
    Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_sequences_are_written_as_escapes() {
        assert_eq!(
            printable("plain text\nline two", false),
            "plain text\nline two"
        );
        assert_eq!(
            printable("evil\u{1b}[31mRED\u{1b}]0;title\u{7}\r\n", false),
            "evil\\u{1b}[31mRED\\u{1b}]0;title\\u{7}\\r\n"
        );
        assert_eq!(printable("a\nb\tc", true), "a\\nb\\tc");
        assert_eq!(printable("x\u{202e}y\u{9b}", false), "x\\u{202e}y\\u{9b}");
    }
}
