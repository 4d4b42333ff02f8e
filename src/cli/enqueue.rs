//! `importlyd enqueue`: insert rows from arguments, a file or standard input. A file is
//! either one URL a line (blank lines and `#` comments skipped) or CSV with the columns
//! `url,options,external_id` (a header line naming them is optional). The whole batch is one
//! transaction: a bad row names its line and nothing is inserted.

use std::io::Read;
use std::path::PathBuf;

use super::{CmdResult, Failure};
use crate::store::{EnqueueRow, Store};

pub async fn enqueue(
    store: &Store,
    urls: Vec<String>,
    options: Option<String>,
    kind: Option<String>,
    file: Option<PathBuf>,
) -> CmdResult {
    let mut rows: Vec<EnqueueRow> = urls
        .into_iter()
        .map(|url| EnqueueRow {
            url,
            kind: kind.clone(),
            options: options.clone(),
            external_id: None,
        })
        .collect();
    if let Some(path) = file {
        let text = read_input(&path)?;
        let mut parsed = parse_rows(&text).map_err(Failure::usage)?;
        for r in &mut parsed {
            if r.kind.is_none() {
                r.kind = kind.clone();
            }
        }
        rows.extend(parsed);
    }
    if rows.is_empty() {
        return Err(Failure::usage("nothing to enqueue: give URLs or --file"));
    }
    let ids = store.enqueue(&rows).await?;
    let skipped = rows.len() - ids.len();
    match (ids.first(), ids.last()) {
        (Some(first), Some(last)) if first != last => {
            println!("queued {} rows (ids {first}..{last})", ids.len())
        }
        (Some(first), _) => println!("queued 1 row (id {first})"),
        _ => println!("queued 0 rows"),
    }
    if skipped > 0 {
        println!("skipped {skipped} rows whose external_id was already queued");
    }
    Ok(())
}

fn read_input(path: &PathBuf) -> Result<String, Failure> {
    let mut text = String::new();
    let res = if path.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    res.map_err(|e| Failure::usage(format!("--file {}: {e}", path.display())))?;
    Ok(text)
}

/// Parses a file's rows; CSV when any line has a comma, plain URLs otherwise.
pub fn parse_rows(text: &str) -> Result<Vec<EnqueueRow>, String> {
    let looks_csv = text
        .lines()
        .any(|l| !l.trim_start().starts_with('#') && l.contains(','));
    if !looks_csv {
        return Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|url| EnqueueRow {
                url: url.to_owned(),
                ..EnqueueRow::default()
            })
            .collect());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| format!("--file line {}: {e}", i + 1))?;
        let field = |n: usize| rec.get(n).filter(|s| !s.is_empty()).map(str::to_owned);
        let Some(url) = field(0) else { continue };
        if i == 0 && url.eq_ignore_ascii_case("url") {
            continue;
        }
        if rec.len() > 3 {
            return Err(format!(
                "--file line {}: expected url,options,external_id but found {} fields \
                 (quote options JSON that contains commas)",
                i + 1,
                rec.len()
            ));
        }
        rows.push(EnqueueRow {
            url,
            kind: None,
            options: field(1),
            external_id: field(2),
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_csv_files() {
        let plain = parse_rows("# list\nhttps://a/1\n\nhttps://a/2\n").unwrap();
        assert_eq!(plain.len(), 2);
        let csv = parse_rows(
            "url,options,external_id\nhttps://a/1,\"{\"\"videoQuality\"\":\"\"720p\"\"}\",asset-1\nhttps://a/2,,\n",
        )
        .unwrap();
        assert_eq!(csv.len(), 2);
        assert_eq!(
            csv[0].options.as_deref(),
            Some(r#"{"videoQuality":"720p"}"#)
        );
        assert_eq!(csv[0].external_id.as_deref(), Some("asset-1"));
        assert_eq!(csv[1].options, None);
        assert!(parse_rows("https://a/1,{\"a\":1,\"b\":2},x\n").is_err());
    }
}
