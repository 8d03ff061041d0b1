//! The HTML rendering: one self-contained page (styles inline, no scripts,
//! no external resources), every text escaped.

use std::fmt::Write;

use super::{InvoiceStatement, Party};

/// `statement` as an HTML document.
pub fn render(statement: &InvoiceStatement) -> String {
    let mut out = String::with_capacity(4096 + statement.rows.len() * 160);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"{lang}\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title} {number}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n\
         <header>\n<div class=\"parties\">\n",
        lang = statement.language.code(),
        title = escape(&statement.title),
        number = escape(&statement.number),
    );
    party(&mut out, &statement.issuer);
    party(&mut out, &statement.customer);
    let _ = write!(
        out,
        "</div>\n<div class=\"facts\">\n<h1>{}</h1>\n<dl>\n",
        escape(&statement.title)
    );
    for (label, value) in &statement.facts {
        let _ = writeln!(out, "<dt>{}</dt><dd>{}</dd>", escape(label), escape(value));
    }
    let [description, quantity, amount] = &statement.columns;
    let _ = write!(
        out,
        "</dl>\n</div>\n</header>\n<table>\n<thead><tr><th>{}</th><th>{}</th>\
         <th class=\"amount\">{}</th></tr></thead>\n<tbody>\n",
        escape(description),
        escape(quantity),
        escape(amount)
    );
    for row in &statement.rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"amount\">{}</td></tr>",
            escape(&row.description),
            escape(&row.quantity),
            escape(&row.amount)
        );
    }
    let _ = write!(
        out,
        "</tbody>\n<tfoot><tr><th colspan=\"2\">{}</th><th class=\"amount\">{}</th></tr></tfoot>\n\
         </table>\n",
        escape(&statement.total_label),
        escape(&statement.total)
    );
    for note in &statement.notes {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", escape(note));
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn party(out: &mut String, party: &Party) {
    let _ = write!(
        out,
        "<address>\n<span class=\"heading\">{}</span><br>\n<strong>{}</strong>",
        escape(&party.heading),
        escape(&party.name)
    );
    for line in &party.lines {
        let _ = write!(out, "<br>\n{}", escape(line));
    }
    out.push_str("\n</address>\n");
}

/// Escapes text for element content and quoted attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

const STYLE: &str = "body { font-family: 'DejaVu Sans', Verdana, sans-serif; font-size: 14px; \
color: #222; max-width: 760px; margin: 2em auto; padding: 0 1em; }
header { display: flex; justify-content: space-between; gap: 2em; flex-wrap: wrap; }
.parties address { font-style: normal; margin-bottom: 1.2em; }
.heading { color: #666; font-size: 12px; text-transform: uppercase; }
h1 { margin: 0 0 .4em; font-size: 26px; }
dl { display: grid; grid-template-columns: auto auto; gap: .2em 1em; margin: 0; }
dt { color: #666; } dd { margin: 0; }
table { width: 100%; border-collapse: collapse; margin-top: 1.5em; }
th, td { text-align: left; padding: .35em .5em; border-bottom: 1px solid #ddd; \
vertical-align: top; }
thead th { border-bottom: 2px solid #222; }
tfoot th { border-top: 2px solid #222; border-bottom: none; font-size: 16px; }
.amount { text-align: right; white-space: nowrap; }
.note { color: #555; font-size: 12px; }
";

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            escape("<b>\"A&B\" 'c'</b>"),
            "&lt;b&gt;&quot;A&amp;B&quot; &#39;c&#39;&lt;/b&gt;"
        );
    }
}
