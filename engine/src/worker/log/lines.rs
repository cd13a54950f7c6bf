//! A worker's byte stream cut into log lines of at most [`MAX_LINE_LEN`]
//! bytes. An overlong line keeps its head and counts the rest, so that the
//! log can say how much was cut; it is handed on when it ends (its newline,
//! or the end of the stream). However long a line runs, it holds at most
//! [`MAX_LINE_LEN`] bytes of memory.

/// Longest line forwarded, in the worker's bytes: a log line, not a data
/// dump (a worker that prints 30 MB of binary data on one line used to put
/// it all in the log); long enough for a stack trace frame or a JSON record.
pub const MAX_LINE_LEN: usize = 4096;

/// One line of a worker's output, without its line end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The line, or its first [`MAX_LINE_LEN`] bytes.
    pub text: &'a [u8],
    /// Bytes of the line past `text`, cut (0: the whole line is there).
    pub cut: u64,
}

impl Line<'_> {
    /// Bytes the worker wrote for the line, its line end not included.
    pub fn len(&self) -> u64 {
        self.text.len() as u64 + self.cut
    }

    /// Whether the worker wrote nothing but the line end.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Cuts a byte stream into [`Line`]s.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    /// The current line's first bytes (at most [`MAX_LINE_LEN`]).
    head: Vec<u8>,
    /// Bytes of the current line cut after `head`.
    cut: u64,
    /// The last byte cut was a `\r`: part of a `\r\n` line end, not of the
    /// line, if the newline follows.
    cut_cr: bool,
}

impl LineSplitter {
    /// Feeds bytes; `emit` is called for every line they end.
    pub(crate) fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(Line<'_>)) {
        while !data.is_empty() {
            let (segment, ends_line, rest) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], true, &data[i + 1..]),
                None => (data, false, &data[data.len()..]),
            };
            let kept = segment.len().min(MAX_LINE_LEN - self.head.len());
            self.head.extend_from_slice(&segment[..kept]);
            if kept < segment.len() {
                self.cut += (segment.len() - kept) as u64;
                self.cut_cr = segment.last() == Some(&b'\r');
            }
            if ends_line {
                if self.cut_cr {
                    self.cut -= 1;
                }
                self.emit(emit);
            }
            data = rest;
        }
    }

    /// The stream ended: emits a last line that had no newline.
    pub(crate) fn finish(&mut self, emit: &mut dyn FnMut(Line<'_>)) {
        if !self.head.is_empty() || self.cut > 0 {
            self.emit(emit);
        }
    }

    fn emit(&mut self, emit: &mut dyn FnMut(Line<'_>)) {
        let text = if self.cut == 0 {
            self.head.strip_suffix(b"\r").unwrap_or(&self.head)
        } else {
            &self.head
        };
        emit(Line {
            text,
            cut: self.cut,
        });
        self.head.clear();
        self.cut = 0;
        self.cut_cr = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        let mut emit =
            |l: Line<'_>| out.push((String::from_utf8_lossy(l.text).into_owned(), l.cut));
        for c in chunks {
            s.feed(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    #[test]
    fn lines_split_across_chunks() {
        let got = split(&[b"hel", b"lo\nwor", b"ld\r\n\nlast"]);
        let want = [("hello", 0), ("world", 0), ("", 0), ("last", 0)];
        assert_eq!(got, want.map(|(l, c)| (l.to_string(), c)));
    }

    #[test]
    fn overlong_lines_keep_their_head_and_count_the_rest() {
        let long = vec![b'x'; MAX_LINE_LEN * 2 + 10];
        let exact = vec![b'y'; MAX_LINE_LEN];
        let got = split(&[&long[..100], &long[100..], b"\n", &exact, b"\nnext\n"]);
        assert_eq!(
            got.iter().map(|(l, c)| (l.len(), *c)).collect::<Vec<_>>(),
            [
                (MAX_LINE_LEN, MAX_LINE_LEN as u64 + 10),
                (MAX_LINE_LEN, 0),
                (4, 0)
            ]
        );
        assert_eq!(got[0].0, "x".repeat(MAX_LINE_LEN));
        assert_eq!(got[2].0, "next");
    }

    #[test]
    fn an_overlong_unterminated_line_is_emitted_once_at_the_end() {
        let long = vec![b'z'; MAX_LINE_LEN + 1];
        let got = split(&[&long]);
        assert_eq!(got, vec![("z".repeat(MAX_LINE_LEN), 1)]);
    }

    #[test]
    fn a_crlf_line_end_is_not_counted_as_cut() {
        let mut line = vec![b'c'; MAX_LINE_LEN];
        line.extend_from_slice(b"\r\n");
        assert_eq!(split(&[&line]), vec![("c".repeat(MAX_LINE_LEN), 0)]);
        let mut line = vec![b'c'; MAX_LINE_LEN + 3];
        line.extend_from_slice(b"\r");
        assert_eq!(split(&[&line, b"\n"]), vec![("c".repeat(MAX_LINE_LEN), 3)]);
        // A `\r` inside the cut part is the line's.
        let mut line = vec![b'c'; MAX_LINE_LEN];
        line.extend_from_slice(b"\rcc\n");
        assert_eq!(split(&[&line]), vec![("c".repeat(MAX_LINE_LEN), 3)]);
    }
}
