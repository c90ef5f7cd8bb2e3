//! The CRI container log format, as the runtime writes it to the file at
//! `log_directory/log_path`: one record per line,
//! `TIMESTAMP STREAM TAG CONTENT`, where STREAM is `stdout` or `stderr` and
//! TAG is `F` (the line is full) or `P` (partial: the runtime split a long
//! line and the next `P`/`F` record of the stream continues it).

/// One record of a CRI log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: &'a str,
    pub stream: Stream,
    pub partial: bool,
    pub content: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("CRI log line {line}: {reason}: {text:?}")]
pub struct ParseError {
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// Parses one line (without its newline).
pub fn parse_line(line: &str) -> Result<Record<'_>, &'static str> {
    let mut parts = line.splitn(4, ' ');
    let timestamp = parts.next().filter(|t| !t.is_empty()).ok_or("no timestamp")?;
    let stream = match parts.next() {
        Some("stdout") => Stream::Stdout,
        Some("stderr") => Stream::Stderr,
        _ => return Err("stream is neither stdout nor stderr"),
    };
    let partial = match parts.next() {
        Some("F") => false,
        Some("P") => true,
        _ => return Err("tag is neither F nor P"),
    };
    // An empty full line is written as `TS stream F` with or without the space.
    let content = parts.next().unwrap_or("");
    Ok(Record {
        timestamp,
        stream,
        partial,
        content,
    })
}

/// A container's output, each stream with its lines joined back (partial
/// records merged, one `\n` after every full line).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Parses a whole log file's text.
pub fn parse(text: &str) -> Result<Output, ParseError> {
    let mut out = Output::default();
    for (n, line) in text.lines().enumerate() {
        let record = parse_line(line).map_err(|reason| ParseError {
            line: n + 1,
            reason,
            text: line.to_owned(),
        })?;
        let sink = match record.stream {
            Stream::Stdout => &mut out.stdout,
            Stream::Stderr => &mut out.stderr,
        };
        sink.push_str(record.content);
        if !record.partial {
            sink.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed<'a> = Result<(Stream, bool, &'a str), &'static str>;

    #[test]
    fn lines_parse() {
        let cases: &[(&str, Parsed)] = &[
            (
                "2016-10-06T00:17:09.669794202Z stdout F 42",
                Ok((Stream::Stdout, false, "42")),
            ),
            (
                "2016-10-06T00:17:09.669794202Z stderr P a b  c",
                Ok((Stream::Stderr, true, "a b  c")),
            ),
            (
                "2016-10-06T00:17:09.669794202Z stdout F",
                Ok((Stream::Stdout, false, "")),
            ),
            (
                "2016-10-06T00:17:09.669794202Z stdout F ",
                Ok((Stream::Stdout, false, "")),
            ),
            (
                "2016-10-06T00:17:09.669794202Z stdin F x",
                Err("stream is neither stdout nor stderr"),
            ),
            (
                "2016-10-06T00:17:09.669794202Z stdout X x",
                Err("tag is neither F nor P"),
            ),
            ("", Err("no timestamp")),
        ];
        for (line, want) in cases {
            let got = parse_line(line).map(|r| (r.stream, r.partial, r.content));
            assert_eq!(&got, want, "{line:?}");
        }
    }

    #[test]
    fn partial_records_join_per_stream() {
        let text = "T stdout P hel\nT stderr F oops\nT stdout F lo\nT stdout F 42\n";
        let out = parse(text).unwrap();
        assert_eq!(out.stdout, "hello\n42\n");
        assert_eq!(out.stderr, "oops\n");
        assert_eq!(parse("T stdout F a\nbad\n").unwrap_err().line, 2);
    }
}
