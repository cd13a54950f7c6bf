//! The rules for what a handler may set on its response: the status and the
//! content type ([`Ctx::set_status`](crate::Ctx::set_status),
//! [`Ctx::set_content_type`](crate::Ctx::set_content_type)).
//!
//! They are checked here, in the worker, because a value the engine's HTTP
//! layer cannot send (a 1xx status, a content type with CR/LF that would split
//! the response) must not get that far: the worker answers the call 500 with a
//! message naming the value instead, so the client always gets an answer and
//! the handler's author learns what was wrong.

use crate::protocol;

/// The statuses a handler may answer with. 1xx are interim responses the
/// server itself sends (`100 Continue`); below 100 and above 599 are not HTTP.
pub const VALID_STATUSES: std::ops::RangeInclusive<u16> = 200..=599;

/// How much of an invalid content type an error message quotes.
const QUOTED_LEN: usize = 64;

/// A status or content type a handler set that cannot be sent. Its message is
/// the body of the 500 the call is answered with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResponse {
    /// A status outside [`VALID_STATUSES`].
    #[error("handler set an invalid status {0} (a function's status must be 200..=599)")]
    Status(u16),
    /// A content type that is not a valid header value.
    #[error("handler set an invalid content type {quoted}: {problem}")]
    ContentType {
        /// The value, quoted with its control characters escaped and cut to
        /// a readable length.
        quoted: String,
        /// What is wrong with it.
        problem: ContentTypeProblem,
    },
}

/// Why a content type is not a valid header value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ContentTypeProblem {
    /// Nothing to send.
    #[error("it is empty")]
    Empty,
    /// Longer than the completion's content-type prefix carries.
    #[error("it is {0} bytes long (at most {max})", max = protocol::MAX_CONTENT_TYPE)]
    TooLong(usize),
    /// CR, LF, NUL or another control character (CR/LF would split the response).
    #[error(
        "it contains the control character {0:?} (only visible ASCII, spaces and tabs are allowed)"
    )]
    Control(char),
    /// Outside ASCII.
    #[error("it contains the non-ASCII character {0:?} (only visible ASCII, spaces and tabs are allowed)")]
    NonAscii(char),
    /// A space or tab first or last, which HTTP strips from a header value.
    #[error("it starts or ends with a space or tab")]
    EdgeWhitespace,
}

/// Checks a status a handler set.
pub fn check_status(status: u16) -> Result<(), InvalidResponse> {
    if VALID_STATUSES.contains(&status) {
        Ok(())
    } else {
        Err(InvalidResponse::Status(status))
    }
}

/// Checks a content type a handler set: 1..=[`protocol::MAX_CONTENT_TYPE`]
/// bytes of visible ASCII, with spaces and tabs allowed only inside.
pub fn check_content_type(content_type: &str) -> Result<(), InvalidResponse> {
    content_type_problem(content_type).map_or(Ok(()), |problem| {
        Err(InvalidResponse::ContentType {
            quoted: quote(content_type),
            problem,
        })
    })
}

fn content_type_problem(content_type: &str) -> Option<ContentTypeProblem> {
    if content_type.is_empty() {
        return Some(ContentTypeProblem::Empty);
    }
    if let Some(c) = content_type
        .chars()
        .find(|&c| c.is_ascii_control() && c != '\t')
    {
        return Some(ContentTypeProblem::Control(c));
    }
    if let Some(c) = content_type.chars().find(|c| !c.is_ascii()) {
        return Some(ContentTypeProblem::NonAscii(c));
    }
    if content_type.len() > protocol::MAX_CONTENT_TYPE {
        return Some(ContentTypeProblem::TooLong(content_type.len()));
    }
    let edge = |c: char| c == ' ' || c == '\t';
    if content_type.starts_with(edge) || content_type.ends_with(edge) {
        return Some(ContentTypeProblem::EdgeWhitespace);
    }
    None
}

/// `value` as a Rust string literal (control characters escaped, so the
/// message cannot itself break a log line or a header), cut after
/// [`QUOTED_LEN`] characters.
fn quote(value: &str) -> String {
    match value.char_indices().nth(QUOTED_LEN) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_200_to_599_are_valid_and_nothing_else() {
        for ok in [200, 204, 301, 404, 599] {
            assert_eq!(check_status(ok), Ok(()), "{ok}");
        }
        for bad in [0, 99, 100, 101, 199, 600, 999, u16::MAX] {
            assert_eq!(check_status(bad), Err(InvalidResponse::Status(bad)));
        }
        assert_eq!(
            InvalidResponse::Status(101).to_string(),
            "handler set an invalid status 101 (a function's status must be 200..=599)"
        );
    }

    #[test]
    fn content_types_must_be_header_values() {
        let longest = "a".repeat(protocol::MAX_CONTENT_TYPE);
        for ok in [
            "text/plain",
            "application/json; charset=utf-8",
            "multipart/form-data;\tboundary=x",
            longest.as_str(),
        ] {
            assert_eq!(check_content_type(ok), Ok(()), "{ok:?}");
        }
        let problem = |ct: &str| match check_content_type(ct) {
            Err(InvalidResponse::ContentType { problem, .. }) => problem,
            other => panic!("{ct:?}: {other:?}"),
        };
        use ContentTypeProblem::*;
        assert_eq!(problem(""), Empty);
        assert_eq!(problem("text/plain\r\nX-Evil: 1"), Control('\r'));
        assert_eq!(problem("text/plain\nX-Evil: 1"), Control('\n'));
        assert_eq!(problem("text/\0plain"), Control('\0'));
        assert_eq!(problem("text/\u{1b}[31m"), Control('\u{1b}'));
        assert_eq!(problem("text/\u{7f}"), Control('\u{7f}'));
        assert_eq!(problem("text/plä"), NonAscii('ä'));
        assert_eq!(problem(" text/plain"), EdgeWhitespace);
        assert_eq!(problem("text/plain\t"), EdgeWhitespace);
        assert_eq!(problem(&format!("{longest}a")), TooLong(256));
    }

    #[test]
    fn the_message_quotes_the_value_escaped_and_cut() {
        let e = check_content_type("text/plain\r\nX-Evil: injected").unwrap_err();
        assert_eq!(
            e.to_string(),
            "handler set an invalid content type \"text/plain\\r\\nX-Evil: injected\": it \
             contains the control character '\\r' (only visible ASCII, spaces and tabs are \
             allowed)"
        );
        let e = check_content_type(&"x".repeat(1000)).unwrap_err();
        let quoted = format!("\"{}\"…", "x".repeat(QUOTED_LEN));
        assert!(e.to_string().contains(&quoted), "{e}");
        assert!(
            e.to_string()
                .ends_with("it is 1000 bytes long (at most 255)"),
            "{e}"
        );
    }
}
