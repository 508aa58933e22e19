//! Self-contained HTML pages (inline CSS and SVG, nothing fetched), for reports that open
//! offline.

use super::svg::esc;
use std::fmt::Write;

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;\
max-width:1480px;margin:24px auto;padding:0 16px;color:#222}\
table{border-collapse:collapse;margin:12px 0;font-size:14px}\
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}\
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}\
td.sig{font-weight:600}.better{color:#007a4d}.worse{color:#b3261e}\
.conclusion{font-size:16px}footer{margin-top:32px;color:#777;font-size:12px}.plots{display:flex;flex-wrap:wrap;gap:12px}\
.samples{display:grid;grid-template-columns:1fr 1fr;gap:12px}\
.samples div{border:1px solid #ddd;padding:8px;white-space:pre-wrap;font-size:13px}\
.note{background:#fff6e0;border:1px solid #e6c200;padding:8px}";

/// Keel's version and the git commit it was built from ("unknown" when built outside a git
/// checkout without KEEL_GIT_COMMIT set; see build.rs).
pub const KEEL_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const KEEL_COMMIT: &str = env!("KEEL_GIT_COMMIT");

/// A whole page: `title` as its title and first heading, then `body` (already HTML), then a
/// footer naming the Keel that wrote it.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t}</title><style>{STYLE}</style></head>\n<body><h1>{t}</h1>\n{body}\
         <footer>Written by Keel {KEEL_VERSION}, commit {KEEL_COMMIT}.</footer></body></html>\n",
        t = esc(title)
    )
}

/// A table; cells are HTML already (escape text with [`esc`]). A cell starting with
/// `<td` is taken whole, so that a caller can add a class.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = String::from("<table><tr>");
    for h in headers {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>\n");
    for row in rows {
        s.push_str("<tr>");
        for cell in row {
            if cell.starts_with("<td") {
                s.push_str(cell);
            } else {
                let _ = write!(s, "<td>{cell}</td>");
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    s
}

/// A report's JSON with the Keel version and commit that made it (`"keel"`), as written to
/// disk and printed by `--json`.
pub fn stamped(json: &serde_json::Value) -> serde_json::Value {
    let mut json = json.clone();
    if let Some(fields) = json.as_object_mut() {
        fields.insert("keel".into(), serde_json::json!({"version": KEEL_VERSION, "commit": KEEL_COMMIT}));
    }
    json
}

/// Writes a report's JSON (pretty, with a "keel" object: version and commit) and HTML page
/// into `dir` as `NAME.json` and `NAME.html`.
pub fn write_report(
    dir: &std::path::Path,
    name: &str,
    json: &serde_json::Value,
    html: &str,
) -> anyhow::Result<()> {
    crate::atomic::write_file(
        &dir.join(format!("{name}.json")),
        serde_json::to_string_pretty(&stamped(json))?.as_bytes(),
    )?;
    crate::atomic::write_file(&dir.join(format!("{name}.html")), html.as_bytes())
}

/// A number with `digits` significant figures, or "n/a" when not finite.
pub fn num(x: f64, digits: usize) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i64;
    let decimals = (digits as i64 - 1 - magnitude).clamp(0, 8) as usize;
    format!("{x:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_tables_and_escaping() {
        assert_eq!(num(1.23456, 3), "1.23");
        assert_eq!(num(1234.4, 3), "1234");
        assert_eq!(num(-0.000123456, 3), "-0.000123");
        assert_eq!(num(f64::NAN, 3), "n/a");
        let t = table(&["a<b", "c"], &[vec!["1".into(), "<td class=\"sig\">2</td>".into()]]);
        assert_eq!(
            t,
            "<table><tr><th>a&lt;b</th><th>c</th></tr>\n<tr><td>1</td><td class=\"sig\">2</td></tr>\n</table>\n"
        );
        assert!(page("x & y", "<p>z</p>").contains("<h1>x &amp; y</h1>"));
    }
}
