//! CSV with a header line to ThreatMesh drafts, and the records of a CSV
//! stream (RFC 4180: quoted fields may hold commas, quotes and newlines).
//! Pure, over any reader.

use std::io::BufRead;

use super::stix::{StixError, not_carried, parse_timestamp, stix_err};
use crate::model::{parse_kind, parse_tlp};
use crate::proto::v1::{IndicatorDraft, Marking};

/// Columns a row may carry (`type` is read as `kind`).
const READ: [&str; 14] = [
    "kind",
    "value",
    "tlp",
    "recipients",
    "may_forward",
    "hop_limit",
    "confidence",
    "tags",
    "jurisdictions",
    "kill_chain_phases",
    "valid_from",
    "valid_until",
    "description",
    "revoked",
];

/// Columns of `threatmesh export --format csv` that describe the source
/// (its id, version, origin, times), not what the importer publishes.
const SOURCE: [&str; 5] = ["id", "version", "origin", "created", "modified"];

/// A [`crate::model::ValidationError`] of a draft made from a CSV row,
/// with the field named by its column.
pub fn csv_field(e: &crate::model::ValidationError) -> StixError {
    let field = match e.field.as_str() {
        "valid_from_unix_ms" => "valid_from",
        "valid_until_unix_ms" => "valid_until",
        f if f.starts_with("marking.recipients") => "recipients",
        f if f.starts_with("marking.hop_limit") => "hop_limit",
        f if f.starts_with("marking") => "tlp",
        f => f.split('[').next().unwrap_or(f),
    };
    stix_err(field, e.message.clone())
}

/// Reads CSV records from `r`, one at a time.
pub struct Records<R> {
    r: R,
    /// Line number where the next record starts (from 1).
    pub line: usize,
}

impl<R: BufRead> Records<R> {
    /// Records of `r`.
    pub fn new(r: R) -> Self {
        Self { r, line: 1 }
    }

    /// The next record and the line it starts on; `None` at the end.
    pub fn next_record(&mut self) -> std::io::Result<Option<(usize, Vec<String>)>> {
        let start = self.line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut line = String::new();
        let mut any = false;
        loop {
            line.clear();
            if self.r.read_line(&mut line)? == 0 {
                if !any {
                    return Ok(None);
                }
                if quoted {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("line {start}: a quoted field is not closed"),
                    ));
                }
                fields.push(std::mem::take(&mut field));
                return Ok(Some((start, fields)));
            }
            any = true;
            self.line += 1;
            let mut chars = line.chars().peekable();
            while let Some(c) = chars.next() {
                match (quoted, c) {
                    (true, '"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    (true, '"') => quoted = false,
                    (true, c) => field.push(c),
                    (false, '"') if field.is_empty() => quoted = true,
                    (false, ',') => fields.push(std::mem::take(&mut field)),
                    (false, '\n') => {}
                    (false, '\r') if chars.peek() == Some(&'\n') => {}
                    (false, c) => field.push(c),
                }
            }
            if !quoted {
                fields.push(std::mem::take(&mut field));
                return Ok(Some((start, fields)));
            }
        }
    }
}

/// A CSV header: which column holds what, and the columns not carried.
#[derive(Debug, Clone)]
pub struct Header {
    columns: Vec<String>,
    /// Columns present that nothing of ours carries (the source's own id,
    /// version, origin and times included).
    pub not_carried: Vec<String>,
}

impl Header {
    /// Reads a header record; `kind` (or `type`), `value` and `tlp` are
    /// required.
    pub fn parse(names: &[String]) -> Result<Self, StixError> {
        let columns: Vec<String> = names
            .iter()
            .map(|n| {
                let n = n.trim().to_ascii_lowercase();
                if n == "type" { "kind".into() } else { n }
            })
            .collect();
        for need in ["kind", "value", "tlp"] {
            if !columns.iter().any(|c| c == need) {
                return Err(stix_err(
                    "header",
                    format!("no '{need}' column (the header is the first line)"),
                ));
            }
        }
        let not_carried = columns
            .iter()
            .filter(|c| !READ.contains(&c.as_str()))
            .cloned()
            .collect();
        Ok(Self {
            columns,
            not_carried,
        })
    }

    /// Whether the columns are those of `threatmesh export --format csv`.
    pub fn is_source_export(&self) -> bool {
        SOURCE.iter().all(|s| self.columns.iter().any(|c| c == s))
    }

    /// The draft of one record, or the column at fault.
    pub fn draft(&self, record: &[String]) -> Result<IndicatorDraft, StixError> {
        if record.len() != self.columns.len() {
            return Err(stix_err(
                "(row)",
                format!(
                    "{} fields, but the header has {}",
                    record.len(),
                    self.columns.len()
                ),
            ));
        }
        let get = |name: &str| -> &str {
            self.columns
                .iter()
                .position(|c| c == name)
                .map(|i| record[i].trim())
                .unwrap_or("")
        };
        let bad = |field: &str, problem: String| stix_err(field, problem);
        let list = |name: &str| -> Vec<String> {
            get(name)
                .split(';')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        };
        let flag = |name: &str| -> Result<bool, StixError> {
            match get(name).to_ascii_lowercase().as_str() {
                "" | "false" | "0" | "no" => Ok(false),
                "true" | "1" | "yes" => Ok(true),
                other => Err(bad(name, format!("'{other}' is not true or false"))),
            }
        };
        let number = |name: &str, default: u32| -> Result<u32, StixError> {
            match get(name) {
                "" => Ok(default),
                s => s
                    .parse()
                    .map_err(|_| bad(name, format!("'{s}' is not a whole number"))),
            }
        };
        let time = |name: &str| -> Result<i64, StixError> {
            match get(name) {
                "" => Ok(0),
                s => parse_timestamp(s).map_err(|e| bad(name, e)),
            }
        };
        if flag("revoked")? {
            return Err(not_carried(
                "revoked",
                "the source revoked it; nothing to publish",
            ));
        }
        let kind = parse_kind(get("kind"))
            .ok_or_else(|| bad("kind", format!("'{}' is not a kind", get("kind"))))?;
        let tlp = parse_tlp(get("tlp"))
            .ok_or_else(|| bad("tlp", format!("'{}' is not a TLP 2.0 label", get("tlp"))))?;
        Ok(IndicatorDraft {
            kind: kind as i32,
            value: get("value").to_string(),
            marking: Some(Marking {
                tlp: tlp as i32,
                recipients: list("recipients"),
                may_forward: flag("may_forward")?,
                hop_limit: number("hop_limit", 0)?,
            }),
            confidence: number("confidence", 50)?,
            tags: list("tags"),
            jurisdictions: list("jurisdictions"),
            kill_chain_phases: list("kill_chain_phases"),
            valid_from_unix_ms: time("valid_from")?,
            valid_until_unix_ms: time("valid_until")?,
            description: get("description").to_string(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_span_lines_inside_quotes() {
        let text = "kind,value,tlp,description\nurl,\"http://a.example/x,y\",GREEN,\"two\nlines, \"\"quoted\"\"\"\r\ndomain,b.example,CLEAR,\n";
        let mut r = Records::new(text.as_bytes());
        let (l1, h) = r.next_record().unwrap().unwrap();
        assert_eq!(l1, 1);
        let header = Header::parse(&h).unwrap();
        let (l2, rec) = r.next_record().unwrap().unwrap();
        assert_eq!(l2, 2);
        assert_eq!(rec[1], "http://a.example/x,y");
        assert_eq!(rec[3], "two\nlines, \"quoted\"");
        let d = header.draft(&rec).unwrap();
        assert_eq!(d.value, "http://a.example/x,y");
        let (l3, rec) = r.next_record().unwrap().unwrap();
        assert_eq!(l3, 4);
        assert_eq!(header.draft(&rec).unwrap().value, "b.example");
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn bad_rows_name_their_column() {
        let header = Header::parse(&[
            "type".into(),
            "value".into(),
            "tlp".into(),
            "confidence".into(),
            "colour".into(),
        ])
        .unwrap();
        assert_eq!(header.not_carried, ["colour"]);
        let row = |r: [&str; 5]| header.draft(&r.map(String::from));
        assert_eq!(
            row(["domian", "x", "GREEN", "", ""]).unwrap_err().field,
            "kind"
        );
        assert_eq!(
            row(["domain", "x", "WHITE", "", ""]).unwrap_err().field,
            "tlp"
        );
        assert_eq!(
            row(["domain", "x", "GREEN", "high", ""]).unwrap_err().field,
            "confidence"
        );
        assert!(row(["domain", "x", "GREEN", "70", "red"]).is_ok());
        assert!(Header::parse(&["value".into(), "tlp".into()]).is_err());
    }
}
