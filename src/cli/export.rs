//! `importlyd export`: the results out, as CSV (RFC 4180, header line) or JSON lines, in the
//! columns of `store::ExportRow`. Rows stream from the database to standard output, so a
//! million rows take no more memory than a few.

use std::io::{BufWriter, Write};

use futures_util::TryStreamExt;

use super::out::Stdout;
use super::{CmdResult, ExportFormat, Failure};
use crate::store::{ExportRow, ListFilter, Store};

/// The header line of the CSV form, in the order of `ExportRow`'s fields.
pub const COLUMNS: [&str; 10] = [
    "id",
    "external_id",
    "url",
    "kind",
    "state",
    "importly_job_id",
    "media_url",
    "credits_used",
    "completed_at",
    "last_error",
];

pub async fn export(store: &Store, filter: &ListFilter, format: ExportFormat) -> CmdResult {
    let mut rows = store.export(filter);
    // When the reader goes away (`export | head`), `Stdout` drops the rest and the loops
    // stop reading rows.
    let out = BufWriter::with_capacity(64 * 1024, Stdout);
    match format {
        ExportFormat::Csv => {
            // Quotes only the fields that need it (a comma, a quote, a line break), doubling
            // inner quotes: RFC 4180. A missing value is an empty field.
            // The header is written by hand so that an empty export still has one.
            let mut w = csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(out);
            w.write_record(COLUMNS).map_err(write_failed)?;
            while let Some(row) = rows.try_next().await? {
                w.serialize(&row).map_err(write_failed)?;
                if super::out::gone() {
                    return Ok(());
                }
            }
            w.flush().map_err(write_failed)?;
        }
        ExportFormat::Jsonl => {
            let mut out = out;
            while let Some(row) = rows.try_next().await? {
                write_json_line(&mut out, &row).map_err(write_failed)?;
                if super::out::gone() {
                    return Ok(());
                }
            }
            out.flush().map_err(write_failed)?;
        }
    }
    Ok(())
}

fn write_json_line(out: &mut impl Write, row: &ExportRow) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, row)?;
    out.write_all(b"\n")
}

fn write_failed(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 1,
        message: format!("export: {e}"),
    }
}
