//! containerd's filter grammar, the subset snapshotters see:
//!
//! ```text
//! filters  = filter ("," filter)*          (comma = AND; several strings = OR)
//! filter   = fieldpath [ ("==" | "!=") value ]
//! fieldpath= field ("." field)*            field = identifier | "quoted"
//! ```
//!
//! Fields: `name`, `parent`, `kind`, `labels.KEY`. A bare fieldpath tests
//! presence. Regex matches (`~=`) are rejected as InvalidArgument.

use crate::{Info, SnapshotError};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

/// A parsed set of filter strings: matches when any string's every selector does.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Filter {
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Filter, SnapshotError> {
        let mut any = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.trim().is_empty() {
                continue;
            }
            any.push(parse_one(f).map_err(|reason| SnapshotError::BadFilter {
                filter: f.to_owned(),
                reason,
            })?);
        }
        Ok(Filter { any })
    }

    pub fn matches(&self, info: &Info) -> bool {
        self.any.is_empty() || self.any.iter().any(|all| all.iter().all(|s| s.matches(info)))
    }
}

impl Selector {
    fn matches(&self, info: &Info) -> bool {
        let value = field(info, &self.path);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value == Some(v.as_str()),
            Op::NotEqual(v) => value.unwrap_or_default() != v,
        }
    }
}

/// The value at `path`, or `None` when `info` has no such field. As
/// containerd's adaptor: name and parent are always present, so
/// `parent==""` selects snapshots without a parent.
fn field<'a>(info: &'a Info, path: &[String]) -> Option<&'a str> {
    let (first, rest) = path.split_first()?;
    match (first.as_str(), rest) {
        ("name", []) => Some(&info.name),
        ("parent", []) => Some(&info.parent),
        ("kind", []) => Some(info.kind.as_str()),
        ("labels", [key]) => info.labels.get(key).map(String::as_str),
        ("labels", [_, _, ..]) => info.labels.get(&rest.join(".")).map(String::as_str),
        _ => None,
    }
}

struct Lexer<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Lexer<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|c| c == b' ' || c == b'\t') {
            self.pos += 1;
        }
    }
    fn starts(&self, t: &str) -> bool {
        self.s[self.pos..].starts_with(t.as_bytes())
    }
    fn quoted(&mut self) -> Result<String, String> {
        let quote = self.s[self.pos];
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err("unterminated quoted string".into()),
                Some(c) if c == quote => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let c = self.peek().ok_or("dangling escape")?;
                    self.pos += 1;
                    out.push(match c {
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        other => other,
                    });
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| "quoted string is not UTF-8".into())
    }
    /// A field name: quoted, or identifier characters up to `.`, `,`, an operator or space.
    fn field(&mut self) -> Result<String, String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') | Some(b'`') => self.quoted(),
            _ => {
                let start = self.pos;
                while let Some(c) = self.peek() {
                    if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'/' {
                        self.pos += 1;
                    } else {
                        break;
                    }
                }
                if start == self.pos {
                    return Err(format!("expected a field name at byte {start}"));
                }
                Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
            }
        }
    }
    /// A value: quoted, or everything up to the next `,`.
    fn value(&mut self) -> Result<String, String> {
        self.skip_ws();
        match self.peek() {
            Some(b'"') | Some(b'`') => {
                let v = self.quoted()?;
                self.skip_ws();
                Ok(v)
            }
            _ => {
                let start = self.pos;
                while self.peek().is_some_and(|c| c != b',') {
                    self.pos += 1;
                }
                Ok(String::from_utf8_lossy(&self.s[start..self.pos]).trim().to_owned())
            }
        }
    }
}

fn parse_one(f: &str) -> Result<Vec<Selector>, String> {
    let mut lx = Lexer {
        s: f.as_bytes(),
        pos: 0,
    };
    let mut out = Vec::new();
    loop {
        let mut path = vec![lx.field()?];
        while lx.peek() == Some(b'.') {
            lx.pos += 1;
            path.push(lx.field()?);
        }
        lx.skip_ws();
        let op = if lx.starts("==") {
            lx.pos += 2;
            Op::Equal(lx.value()?)
        } else if lx.starts("!=") {
            lx.pos += 2;
            Op::NotEqual(lx.value()?)
        } else if lx.starts("~=") {
            return Err("regular-expression matches (~=) are not supported".into());
        } else {
            Op::Present
        };
        out.push(Selector { path, op });
        lx.skip_ws();
        match lx.peek() {
            None => return Ok(out),
            Some(b',') => lx.pos += 1,
            Some(c) => return Err(format!("unexpected {:?} at byte {}", c as char, lx.pos)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;
    use std::time::SystemTime;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn table() {
        let a = info("a", "p", Kind::Active, &[("containerd.io/gc.root", "x"), ("l", "2")]);
        let p = info("p", "", Kind::Committed, &[]);
        let cases: &[(&[&str], bool, bool)] = &[
            (&[], true, true),
            (&["name==a"], true, false),
            (&["name==p", "name==a"], true, true),
            (&["parent==p"], true, false),
            (&["parent!=\"\""], true, false),
            // containerd's remote-snapshot lookup of a first layer.
            (&["parent==\"\""], false, true),
            (&["kind==committed,parent==\"\""], false, true),
            (&["kind==committed"], false, true),
            (&["kind==active,labels.\"containerd.io/gc.root\"==x"], true, false),
            (&["labels.l"], true, false),
            (&["labels.l==2"], true, false),
            (&["labels.l==3"], false, false),
            (&["name==a,labels.l"], true, false),
            (&["labels.\"containerd.io/gc.root\""], true, false),
        ];
        for (filters, want_a, want_p) in cases {
            let f = Filter::parse(filters).unwrap();
            assert_eq!((f.matches(&a), f.matches(&p)), (*want_a, *want_p), "{filters:?}");
        }
        for bad in ["name~=a.*", "name==a,", "==x", "name=a"] {
            assert!(Filter::parse(&[bad]).is_err(), "{bad}");
        }
    }
}
