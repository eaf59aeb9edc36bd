//! The import parsers (`src/cli/import_file.rs`, `parse`): export's CSV and JSON (totals and
//! daily), GoatCounter's CSV, the format recognised or given, with and without a path prefix.
//!
//! Input: the first line chooses how to read the rest, which is the file (decoded lossily as
//! UTF-8). Its first byte's low bits: `& 3` the format (0 recognised from the content, 1 `csv`,
//! 2 `json`, 3 `goatcounter`), `& 4` a path prefix, which is the rest of that first line, `& 8`
//! the time zone Europe/Berlin instead of UTC. So `7/blog/` reads GoatCounter under `/blog/`.
//!
//! Properties:
//! 1. never panics, and an error's message is never empty;
//! 2. a file read as GoatCounter's or as a daily export has totals that are the sums of its
//!    days; a totals file has no days; only GoatCounter skips rows;
//! 3. a format given as the one recognised reads the same; a prefix changes nothing but
//!    GoatCounter files;
//! 4. what was read, written out by `viewcounter export` (CSV and JSON, totals and daily), reads
//!    back as the same numbers: `export | import` is the identity.
#![no_main]

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use libfuzzer_sys::fuzz_target;
use viewcounter::cli::Format;
use viewcounter::cli::export::{DayRow, Row, render, render_days};
use viewcounter::fuzzing::{ImportFormat, ImportRows, import_file};

fn sums_of_days(days: &[(String, String, u64)]) -> Vec<(String, u64)> {
    let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
    for (slug, _, views) in days {
        let sum = sums.entry(slug).or_default();
        *sum = sum
            .checked_add(*views)
            .expect("a day sum the parser accepted overflows");
    }
    sums.into_iter()
        .map(|(slug, sum)| (slug.to_owned(), sum))
        .collect()
}

/// The rows read back from `text` (an export), as any format.
fn read_back(text: &str, format: Option<ImportFormat>, tz: &TimeZone) -> ImportRows {
    import_file(text, format, None, tz)
        .unwrap_or_else(|e| panic!("export's own output refused ({format:?}): {e}\n{text}"))
}

fuzz_target!(|data: &[u8]| {
    let (first, file) = match data.iter().position(|&b| b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let selector = first.first().copied().unwrap_or(0);
    let format = match selector & 3 {
        1 => Some(ImportFormat::Csv),
        2 => Some(ImportFormat::Json),
        3 => Some(ImportFormat::Goatcounter),
        _ => None,
    };
    let prefix_text = String::from_utf8_lossy(first.get(1..).unwrap_or_default());
    let prefix = (selector & 4 != 0).then_some(prefix_text.as_ref());
    let tz = if selector & 8 != 0 {
        TimeZone::get("Europe/Berlin").expect("a bundled zone")
    } else {
        TimeZone::UTC
    };
    let text = String::from_utf8_lossy(file);

    let read = import_file(&text, format, prefix, &tz);
    let rows = match read {
        Ok(rows) => rows,
        Err(message) => {
            // 1.
            assert!(!message.trim().is_empty());
            return;
        }
    };

    // 2.
    let goat = rows.format == Some(ImportFormat::Goatcounter);
    if goat || !rows.days.is_empty() {
        assert_eq!(
            rows.totals,
            sums_of_days(&rows.days),
            "totals are the days' sums"
        );
    }
    if !goat {
        assert_eq!(rows.skipped, 0, "only GoatCounter skips rows");
    }

    // 3.
    if format.is_none() && rows.format.is_some() {
        assert_eq!(
            import_file(&text, rows.format, prefix, &tz).as_ref(),
            Ok(&rows),
            "given as recognised"
        );
    }
    if !goat && prefix.is_some() {
        assert_eq!(
            import_file(&text, format, None, &tz).as_ref(),
            Ok(&rows),
            "a prefix changed a {:?} file",
            rows.format
        );
    }

    // 4.
    let totals: Vec<Row> = rows
        .totals
        .iter()
        .map(|(slug, total)| Row {
            slug: slug.clone(),
            total: *total,
        })
        .collect();
    for out in [Format::Csv, Format::Json] {
        let back = read_back(&render(&totals, out), None, &tz);
        assert_eq!(
            back.totals, rows.totals,
            "export {out:?} | import changed the totals"
        );
    }
    if !rows.days.is_empty() {
        let days: Vec<DayRow> = rows
            .days
            .iter()
            .map(|(slug, day, views)| DayRow {
                slug: slug.clone(),
                day: day.clone(),
                views: *views,
            })
            .collect();
        for out in [Format::Csv, Format::Json] {
            let back = read_back(&render_days(&days, out), None, &tz);
            assert_eq!(
                back.days, rows.days,
                "export --daily {out:?} | import changed the days"
            );
        }
    }
});
