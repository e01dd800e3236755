//! What the database conventions take from a SQL query's text: the text with its literals
//! replaced by `?` (db.query.text for queries that carry values in their text), the operation
//! and the first collection it names.

/// `text` with every literal (strings, numbers, dollar-quoted bodies) replaced by `?`;
/// placeholders (`$1`, `?`, `:name`), identifiers, keywords and comments are kept as written.
/// A literal cut off by the capture's end becomes `?` too: a value is never half shown.
pub(crate) fn sanitize(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Start of the verbatim run not yet copied.
    let mut from = 0;
    while i < b.len() {
        let c = b[i];
        let literal_end = match c {
            b'\'' => Some(quoted_end(b, i + 1, b'\'')),
            // E'..', B'..', X'..', N'..' (escape, bit, hex, national strings).
            b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N'
                if b.get(i + 1) == Some(&b'\'') && !word_byte_before(b, i) =>
            {
                Some(quoted_end(b, i + 2, b'\''))
            }
            b'$' => dollar_quote_end(b, i),
            b'0'..=b'9' if !word_byte_before(b, i) => Some(number_end(b, i)),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = line_end(b, i);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(b, i + 2);
                continue;
            }
            b'"' | b'`' => {
                // Quoted identifiers are names, not values.
                i = quoted_end(b, i + 1, c);
                continue;
            }
            _ => None,
        };
        match literal_end {
            Some(end) => {
                out.push_str(&text[from..i]);
                out.push('?');
                i = end;
                from = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&text[from.min(b.len())..]);
    out
}

/// Whether the byte before `i` continues a word (so a digit there is part of a name: `t1`).
fn word_byte_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'$')
}

/// Past the closing `quote` of a literal whose body starts at `i` (a doubled quote escapes it,
/// as does a backslash); the end of the text when it is not closed.
fn quoted_end(b: &[u8], mut i: usize, quote: u8) -> usize {
    while i < b.len() {
        if b[i] == b'\\' {
            i += 2;
        } else if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

fn number_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
        // An exponent's sign belongs to the number: 1e-5.
        if (b[i] == b'e' || b[i] == b'E') && matches!(b.get(i + 1), Some(b'-' | b'+')) {
            i += 1;
        }
        i += 1;
    }
    i
}

/// Past a dollar-quoted string (`$$..$$`, `$tag$..$tag$`) starting at `i`; None when the `$`
/// starts a placeholder (`$1`) or is part of a name.
fn dollar_quote_end(b: &[u8], i: usize) -> Option<usize> {
    if word_byte_before(b, i) {
        return None;
    }
    let tag_len = b[i + 1..].iter().position(|&c| c == b'$')?;
    let tag = &b[i..i + tag_len + 2];
    if !tag[1..tag.len() - 1].iter().all(|&c| c.is_ascii_alphabetic() || c == b'_') {
        return None;
    }
    let body = i + tag.len();
    let end = b[body..].windows(tag.len()).position(|w| w == tag);
    Some(end.map_or(b.len(), |e| body + e + tag.len()))
}

fn line_end(b: &[u8], i: usize) -> usize {
    b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |e| i + e)
}

fn block_comment_end(b: &[u8], i: usize) -> usize {
    b[i..].windows(2).position(|w| w == b"*/").map_or(b.len(), |e| i + e + 2)
}

/// The words of a query, upper-cased keywords and names as written, without comments,
/// literals and punctuation but for `(`, which tells a subquery from a table.
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .flat_map(|w| {
            // "(SELECT" and "users(id" hold two words each.
            let mut parts = Vec::new();
            let mut rest = w;
            while let Some(at) = rest.find('(') {
                parts.push(&rest[..at]);
                parts.push("(");
                rest = &rest[at + 1..];
            }
            parts.push(rest);
            parts
        })
        .filter(|w| !w.is_empty())
}

/// `text` from its first word that is not in a comment.
fn without_leading_comments(text: &str) -> &str {
    let b = text.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        match (b.get(i), b.get(i + 1)) {
            (Some(b'-'), Some(b'-')) => i = line_end(b, i),
            (Some(b'/'), Some(b'*')) => i = block_comment_end(b, i + 2),
            _ => return &text[i..],
        }
    }
}

/// (db.operation.name, db.collection.name) of a query: its first keyword, and the first table
/// it names, as written (with any schema prefix).
pub(crate) fn operation_and_collection(text: &str) -> (Option<String>, Option<String>) {
    let mut words = words(without_leading_comments(text));
    let Some(first) = words.next() else { return (None, None) };
    let op = first.to_ascii_uppercase();
    if !op.bytes().all(|c| c.is_ascii_alphabetic()) {
        return (None, None);
    }
    // The word after which the collection is named, and the words that may come between.
    let (after, skippable): (&[&str], &[&str]) = match op.as_str() {
        "SELECT" | "DELETE" => (&["FROM"], &[]),
        "INSERT" | "MERGE" | "REPLACE" => (&["INTO"], &[]),
        "UPDATE" => (&["UPDATE"], &["ONLY"]),
        "CREATE" | "DROP" | "ALTER" => (&["TABLE", "VIEW"], &["IF", "NOT", "EXISTS", "ONLY"]),
        "TRUNCATE" => (&["TRUNCATE", "TABLE"], &["TABLE", "ONLY"]),
        _ => (&[], &[]),
    };
    let mut collection = None;
    if !after.is_empty() {
        let mut all = std::iter::once(first).chain(words);
        if all.any(|w| after.iter().any(|a| w.eq_ignore_ascii_case(a))) {
            let mut rest = all.skip_while(|w| skippable.iter().any(|s| w.eq_ignore_ascii_case(s)));
            collection = match rest.next() {
                Some("(") | None => None,
                Some(name) => Some(name.to_string()),
            };
        }
    }
    (Some(op), collection)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders_and_placeholders_stay() {
        assert_eq!(
            sanitize("SELECT * FROM t1 WHERE name = 'o''brien' AND id = 42 AND x = $1"),
            "SELECT * FROM t1 WHERE name = ? AND id = ? AND x = $1"
        );
        assert_eq!(sanitize("UPDATE users SET a = 1.5e-3, b = ?"), "UPDATE users SET a = ?, b = ?");
        assert_eq!(sanitize("SELECT E'\\n', X'ff', $$body$$, $q$x$q$"), "SELECT ?, ?, ?, ?");
        assert_eq!(sanitize("INSERT INTO \"t2\" VALUES (:id)"), "INSERT INTO \"t2\" VALUES (:id)");
        assert_eq!(sanitize("SELECT 1 -- it's 2\nFROM t"), "SELECT ? -- it's 2\nFROM t");
        assert_eq!(sanitize("SELECT /* 'x' */ col9"), "SELECT /* 'x' */ col9");
    }

    #[test]
    fn a_literal_cut_by_the_capture_is_hidden_whole() {
        assert_eq!(sanitize("SELECT 'secret pass"), "SELECT ?");
        assert_eq!(sanitize("SELECT $$cut"), "SELECT ?");
    }

    #[test]
    fn operations_and_first_collections() {
        let oc = |q| operation_and_collection(q);
        let some = |o: &str, c: &str| (Some(o.to_string()), Some(c.to_string()));
        assert_eq!(oc("select name from users where id = $1"), some("SELECT", "users"));
        assert_eq!(oc("INSERT INTO shop.orders (id) VALUES (1)"), some("INSERT", "shop.orders"));
        assert_eq!(oc("UPDATE users SET a = 1"), some("UPDATE", "users"));
        assert_eq!(oc("DELETE FROM missing WHERE id = 1"), some("DELETE", "missing"));
        assert_eq!(oc("CREATE TABLE IF NOT EXISTS users (id int)"), some("CREATE", "users"));
        assert_eq!(oc("TRUNCATE TABLE logs"), some("TRUNCATE", "logs"));
        assert_eq!(oc("SELECT * FROM (SELECT 1) s"), (Some("SELECT".into()), None));
        assert_eq!(oc("SELECT 1"), (Some("SELECT".into()), None));
        assert_eq!(oc("  "), (None, None));
        assert_eq!(oc("?"), (None, None));
        assert_eq!(oc("/* app */ -- x\n SELECT a FROM b"), some("SELECT", "b"));
        assert_eq!(oc("DROP TABLE IF EXISTS t"), some("DROP", "t"));
    }
}
