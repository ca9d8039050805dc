//! Listings as the read commands print them: one JSON object a line with
//! `--json`, a message when there is nothing, else an aligned table whose
//! columns widen to fit their longest value.

/// One column: its title, and whether numbers in it are right-aligned.
#[derive(Debug, Clone, Copy)]
pub struct Col {
    /// Header text.
    pub title: &'static str,
    /// Right-align (numbers).
    pub right: bool,
}

/// A left-aligned column.
pub const fn col(title: &'static str) -> Col {
    Col {
        title,
        right: false,
    }
}

/// A right-aligned (numeric) column.
pub const fn num(title: &'static str) -> Col {
    Col { title, right: true }
}

/// Prints `items`: as JSON lines with `json`, `empty` when there are none,
/// else a table of `cols` with one row per item from `row`.
pub fn listing<T>(
    items: &[T],
    json: bool,
    to_json: impl Fn(&T) -> serde_json::Value,
    empty: &str,
    cols: &[Col],
    row: impl Fn(&T) -> Vec<String>,
) {
    if json {
        for i in items {
            out!("{}", to_json(i));
        }
    } else if items.is_empty() {
        out!("{empty}");
    } else {
        let rows: Vec<Vec<String>> = items.iter().map(row).collect();
        for line in render(cols, &rows) {
            out!("{line}");
        }
    }
}

/// The lines of a table: header first, columns two spaces apart, the last
/// column unpadded.
pub fn render(cols: &[Col], rows: &[Vec<String>]) -> Vec<String> {
    let widths: Vec<usize> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|v| v.chars().count())
                .chain([c.title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, (c, w))) in cells.iter().zip(cols.iter().zip(&widths)).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            match (c.right, i == last) {
                (true, _) => out.push_str(&format!("{cell:>w$}")),
                (false, false) => out.push_str(&format!("{cell:<w$}")),
                (false, true) => out.push_str(cell),
            }
        }
        out
    };
    let mut out = vec![line(cols.iter().map(|c| c.title).collect())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out
}

/// "-" for an empty cell.
pub fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_longest_value() {
        let rows = vec![
            vec![
                "a-very-long-org.example".to_string(),
                "7".to_string(),
                "x".into(),
            ],
            vec!["b.example".to_string(), "12345".to_string(), "yy".into()],
        ];
        let lines = render(&[col("ORG"), num("SEQ"), col("NOTE")], &rows);
        assert_eq!(lines[0], "ORG                        SEQ  NOTE");
        assert_eq!(lines[1], "a-very-long-org.example      7  x");
        assert_eq!(lines[2], "b.example                12345  yy");
    }
}
