//! An import file's text into validated rows, for `viewcounter import` and
//! `POST /api/v1/import` alike (see [`crate::import`]).
//!
//! Three kinds of file are read: `viewcounter export` as CSV or JSON (all-time totals, or views
//! per day with `--daily`), and GoatCounter's CSV export of single pageviews. Parsing is pure
//! (no store, no clock) and all-or-nothing: every row is checked, and one bad row refuses the
//! whole file with every bad row listed, so the applying half never meets a half-valid file.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, Read};

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::edge::slug::{SITE, Slug};
use crate::import::{DAY_ROW_HEADER, DayRow, row_peak, row_presence};
use crate::storage::MAX_COUNT;
use crate::storage::presence::{DayPresence, Peak};

/// Most bad rows listed in one error: a file bad on every row would otherwise print megabytes.
pub(crate) const MAX_REPORTED: usize = 100;

/// The only GoatCounter export version whose columns we know.
const GOATCOUNTER_VERSION: &str = "2";

/// GoatCounter's own header, for messages (it writes the version glued to `Path`).
const GOATCOUNTER_HEADER: &str = "2Path,Title,Event,…";

/// What kind of file it is; recognised from the content unless given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFormat {
    /// `viewcounter export` as CSV: `slug,total` or, with `--daily`, `slug,day,views`.
    Csv,
    /// `viewcounter export --format json`, all-time or daily.
    Json,
    /// GoatCounter's CSV export of single pageviews (export format version 2).
    Goatcounter,
}

impl ImportFormat {
    /// What a file of this format starts with, for messages.
    fn expected(self) -> &'static str {
        match self {
            Self::Csv => "a CSV header `slug,total` or `slug,day,views`",
            Self::Json => {
                "a JSON array `[{\"slug\":…,\"total\":N},…]` or \
                 `[{\"slug\":…,\"day\":\"YYYY-MM-DD\",\"views\":N},…]`"
            }
            Self::Goatcounter => "GoatCounter's CSV header `2Path,Title,Event,…`",
        }
    }
}

impl fmt::Display for ImportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Goatcounter => "goatcounter",
        })
    }
}

/// What a file says, validated: all-time totals and/or views per day, per post.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    /// The format read.
    pub format: Option<ImportFormat>,
    /// Views per post (for a daily or GoatCounter file: the sum of its days).
    pub totals: BTreeMap<Slug, u64>,
    /// Views per post and day, where the file has days (daily export, GoatCounter).
    pub days: BTreeMap<(Slug, Date), u64>,
    /// Reading times and peaks per post and day, where the file has them (`export --daily`).
    pub presence: BTreeMap<(Slug, Date), DayPresence>,
    /// The whole site's peak per day, where the file has it (`export --daily`'s `*` rows).
    pub site_peaks: BTreeMap<Date, Peak>,
    /// Rows left out on purpose (GoatCounter bot and event rows, paths outside --path-prefix),
    /// for the summary.
    pub skipped: usize,
}

/// One bad row: 1-based line number and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub(crate) struct RowError {
    pub line: usize,
    pub reason: String,
}

/// How to read a file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParseOptions<'a> {
    /// The format to expect; `None` recognises it from the content.
    pub format: Option<ImportFormat>,
    /// GoatCounter only: count only paths under this one (e.g. `/blog/`), relative to it.
    pub path_prefix: Option<&'a str>,
    /// GoatCounter only: the zone whose calendar decides which day a pageview falls on.
    pub timezone: &'a TimeZone,
}

/// Why a file was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ImportError {
    #[error("cannot read the file: {0}")]
    Read(std::io::Error),
    #[error("the file is empty")]
    Empty,
    #[error(
        "cannot tell what kind of file this is: it starts with {found}; expected {}, {}, or {}",
        ImportFormat::Csv.expected(),
        ImportFormat::Json.expected(),
        ImportFormat::Goatcounter.expected()
    )]
    Unrecognised { found: String },
    #[error("format {given} expects {}, but the file starts with {found}", given.expected())]
    WrongFormat { given: ImportFormat, found: String },
    #[error(
        "GoatCounter export format version {found:?} is not supported, only version \
         {GOATCOUNTER_VERSION} (header `{GOATCOUNTER_HEADER}`)"
    )]
    GoatcounterVersion { found: String },
    #[error("the GoatCounter header has no {column:?} column")]
    GoatcounterColumn { column: &'static str },
    #[error("{}", list_bad_rows(errors, *more))]
    BadRows { errors: Vec<RowError>, more: usize },
}

fn list_bad_rows(errors: &[RowError], more: usize) -> String {
    let count = errors.len() + more;
    let mut out = format!("{count} bad row{}:", if count == 1 { "" } else { "s" });
    for error in errors {
        out.push_str(&format!("\n{error}"));
    }
    if more > 0 {
        out.push_str(&format!("\n…and {more} more"));
    }
    out
}

/// Every row checked; any bad row means Err with ALL bad rows (up to [`MAX_REPORTED`] listed,
/// plus a count of the rest), nothing partial.
pub(crate) fn parse(text: &str, options: &ParseOptions<'_>) -> Result<Parsed, ImportError> {
    read(text.as_bytes(), options)
}

/// [`parse`] as the file is read: rows are checked and added up as they come, so memory
/// follows the posts and days the file names, not its size.
pub(crate) fn read(
    mut input: impl BufRead,
    options: &ParseOptions<'_>,
) -> Result<Parsed, ImportError> {
    let head = read_head(&mut input).map_err(ImportError::Read)?;
    // Editors on Windows save UTF-8 with a byte order mark; it is not part of the first field.
    let head = head
        .strip_prefix("\u{feff}".as_bytes())
        .unwrap_or(&head)
        .to_vec();
    let text = String::from_utf8_lossy(&head).into_owned();
    if text.trim().is_empty() {
        return Err(ImportError::Empty);
    }
    let shape = recognise(&text, options.format)?;
    // The head read to recognise the file is read again by the row readers, so that their
    // line numbers are the file's.
    let input = std::io::Cursor::new(head).chain(input);
    match shape {
        Shape::Json => parse_json(input),
        shape @ (Shape::TotalsCsv | Shape::DailyCsv | Shape::PresenceCsv) => {
            parse_csv(input, shape)
        }
        Shape::Goatcounter => parse_goatcounter(input, options),
    }
}

/// A recognised file's first line is a short header, or starts with `[`: no more is read of it.
const HEAD_LINE_BYTES: u64 = 64 * 1024;

/// The file's lines up to the first that holds more than white space (each at most
/// [`HEAD_LINE_BYTES`]: an export's JSON is one line as long as the file).
fn read_head(input: &mut impl BufRead) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let read = input.take(HEAD_LINE_BYTES).read_until(b'\n', &mut head)?;
        let line = &head[start..];
        let bom_or_space = |c: char| c.is_whitespace() || c == '\u{feff}';
        if read == 0
            || !String::from_utf8_lossy(line)
                .trim_matches(bom_or_space)
                .is_empty()
        {
            return Ok(head);
        }
    }
}

// ---- Recognition ----

/// The shapes a file's start can have; a given format must still match one of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Json,
    TotalsCsv,
    DailyCsv,
    /// `export --daily` with reading times and peaks.
    PresenceCsv,
    Goatcounter,
}

impl Shape {
    fn detect(text: &str) -> Option<Self> {
        if text.trim_start().starts_with('[') {
            return Some(Self::Json);
        }
        match first_line(text) {
            "slug,total" => Some(Self::TotalsCsv),
            "slug,day,views" => Some(Self::DailyCsv),
            DAY_ROW_HEADER => Some(Self::PresenceCsv),
            line if is_goatcounter_header(line) => Some(Self::Goatcounter),
            _ => None,
        }
    }

    fn format(self) -> ImportFormat {
        match self {
            Self::Json => ImportFormat::Json,
            Self::TotalsCsv | Self::DailyCsv | Self::PresenceCsv => ImportFormat::Csv,
            Self::Goatcounter => ImportFormat::Goatcounter,
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Json => "a JSON array (`[`)".into(),
            Self::TotalsCsv => "the CSV header `slug,total`".into(),
            Self::DailyCsv => "the CSV header `slug,day,views`".into(),
            Self::PresenceCsv => format!("the CSV header `{DAY_ROW_HEADER}`"),
            Self::Goatcounter => format!("GoatCounter's CSV header `{GOATCOUNTER_HEADER}`"),
        }
    }
}

fn recognise(text: &str, given: Option<ImportFormat>) -> Result<Shape, ImportError> {
    match (given, Shape::detect(text)) {
        (None, Some(shape)) => Ok(shape),
        (None, None) => Err(ImportError::Unrecognised {
            found: quote_start(text),
        }),
        (Some(given), Some(shape)) if shape.format() == given => Ok(shape),
        (Some(given), Some(shape)) => Err(ImportError::WrongFormat {
            given,
            found: shape.describe(),
        }),
        (Some(given), None) => Err(ImportError::WrongFormat {
            given,
            found: quote_start(text),
        }),
    }
}

/// The first non-empty line; the CSV reader skips empty lines too, so it is the header.
fn first_line(text: &str) -> &str {
    text.lines()
        .find(|line| !line.is_empty())
        .unwrap_or_default()
}

/// `2Path,` as GoatCounter writes it, or `2,Path,` as its documentation shows it; any version
/// number, so that another version is refused by name rather than as an unknown file.
fn is_goatcounter_header(line: &str) -> bool {
    let rest = line.trim_start_matches(|c: char| c.is_ascii_digit());
    rest.len() < line.len() && (rest.starts_with("Path,") || rest.starts_with(",Path,"))
}

fn quote_start(text: &str) -> String {
    const SHOWN: usize = 60;
    let line = first_line(text);
    let mut shown: String = line.chars().take(SHOWN).collect();
    if shown.len() < line.len() {
        shown.push('…');
    }
    format!("{shown:?}")
}

// ---- Collecting rows ----

/// How rows are numbered in messages: CSV by line, JSON by array element.
#[derive(Debug, Clone, Copy)]
enum Place {
    Line,
    Element,
}

impl Place {
    fn name(self, n: usize) -> String {
        match self {
            Self::Line => format!("line {n}"),
            Self::Element => format!("element {n}"),
        }
    }
}

/// Rows gathered so far, with where each came from so that a duplicate names both places.
struct Builder {
    parsed: Parsed,
    place: Place,
    total_at: BTreeMap<Slug, usize>,
    day_at: BTreeMap<(Slug, Date), usize>,
    site_at: BTreeMap<Date, usize>,
    errors: Vec<RowError>,
    more: usize,
}

impl Builder {
    fn new(format: ImportFormat, place: Place) -> Self {
        Self {
            parsed: Parsed {
                format: Some(format),
                ..Parsed::default()
            },
            place,
            total_at: BTreeMap::new(),
            day_at: BTreeMap::new(),
            site_at: BTreeMap::new(),
            errors: Vec::new(),
            more: 0,
        }
    }

    /// An all-time total; a second row for the same post contradicts the first.
    fn total(&mut self, at: usize, slug: Slug, views: u64) -> Result<(), String> {
        if let Some(&first) = self.total_at.get(&slug) {
            let first = self.place.name(first);
            return Err(format!("slug {slug:?} is already given at {first}"));
        }
        self.add(slug.clone(), None, views)?;
        self.total_at.insert(slug, at);
        Ok(())
    }

    /// A post's views on one day, and what presence left of it if the file says; a second row
    /// for the same post and day contradicts the first.
    fn day(
        &mut self,
        at: usize,
        slug: Slug,
        day: Date,
        views: u64,
        presence: Option<DayPresence>,
    ) -> Result<(), String> {
        let key = (slug, day);
        if let Some(&first) = self.day_at.get(&key) {
            let first = self.place.name(first);
            return Err(format!(
                "slug {:?} on {day} is already given at {first}",
                key.0
            ));
        }
        self.add(key.0.clone(), Some(day), views)?;
        if let Some(presence) = presence.filter(|p| *p != DayPresence::default()) {
            self.parsed.presence.insert(key.clone(), presence);
        }
        self.day_at.insert(key, at);
        Ok(())
    }

    /// The whole site's peak on one day; a second row for the same day contradicts the first.
    fn site_peak(&mut self, at: usize, day: Date, peak: Peak) -> Result<(), String> {
        if let Some(&first) = self.site_at.get(&day) {
            let first = self.place.name(first);
            return Err(format!(
                "the site ({SITE:?}) on {day} is already given at {first}"
            ));
        }
        if peak.live > 0 {
            self.parsed.site_peaks.insert(day, peak);
        }
        self.site_at.insert(day, at);
        Ok(())
    }

    /// One pageview; GoatCounter has a row per view, so repeats are the point.
    fn view(&mut self, slug: Slug, day: Date) -> Result<(), String> {
        self.add(slug, Some(day), 1)
    }

    fn skip(&mut self) {
        self.parsed.skipped += 1;
    }

    /// Adds to the day and the total, both checked first so a sum above [`MAX_COUNT`] changes
    /// neither: the row where it goes over is the one refused.
    fn add(&mut self, slug: Slug, day: Option<Date>, views: u64) -> Result<(), String> {
        let over =
            |what: &str| format!("the views of {slug:?}{what} add up to more than {MAX_COUNT}");
        let sum = |old: u64| old.checked_add(views).filter(|&sum| sum <= MAX_COUNT);
        let old_total = self.parsed.totals.get(&slug).copied().unwrap_or(0);
        let total = sum(old_total).ok_or_else(|| over(""))?;
        if let Some(day) = day {
            let key = (slug.clone(), day);
            let old = self.parsed.days.get(&key).copied().unwrap_or(0);
            let on_day = sum(old).ok_or_else(|| over(&format!(" on {day}")))?;
            self.parsed.days.insert(key, on_day);
        }
        self.parsed.totals.insert(slug, total);
        Ok(())
    }

    fn fail(&mut self, line: usize, reason: String) {
        if self.errors.len() < MAX_REPORTED {
            self.errors.push(RowError { line, reason });
        } else {
            self.more += 1;
        }
    }

    fn finish(self) -> Result<Parsed, ImportError> {
        if self.errors.is_empty() {
            Ok(self.parsed)
        } else {
            Err(ImportError::BadRows {
                errors: self.errors,
                more: self.more,
            })
        }
    }
}

// ---- Field values ----

fn parse_slug(raw: &str) -> Result<Slug, String> {
    Slug::parse(raw).map_err(|e| format!("bad slug {raw:?}: {e}"))
}

/// Digits only: `str::parse` would also take a leading `+`, which no export writes.
fn parse_count(raw: &str, what: &str) -> Result<u64, String> {
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{what} {raw:?} is not a whole number (digits only, no sign)"
        ));
    }
    raw.parse()
        .ok()
        .filter(|&n| n <= MAX_COUNT)
        .ok_or_else(|| too_large(what, raw))
}

/// A count is at most [`MAX_COUNT`], what Redis can hold.
fn checked_count(n: u64, what: &str) -> Result<u64, String> {
    if n <= MAX_COUNT {
        Ok(n)
    } else {
        Err(too_large(what, &n.to_string()))
    }
}

fn too_large(what: &str, raw: &str) -> String {
    format!("{what} {raw} is larger than the largest count, {MAX_COUNT}")
}

/// Exactly `YYYY-MM-DD`, as `export --daily` writes it; jiff alone would take more shapes.
fn parse_day(raw: &str) -> Result<Date, String> {
    let shaped = raw.len() == 10
        && raw.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            _ => b.is_ascii_digit(),
        });
    shaped
        .then(|| raw.parse::<Date>().ok())
        .flatten()
        .ok_or_else(|| format!("day {raw:?} is not a date (YYYY-MM-DD)"))
}

// ---- viewcounter's CSV ----

fn parse_csv(input: impl Read, shape: Shape) -> Result<Parsed, ImportError> {
    let mut builder = Builder::new(ImportFormat::Csv, Place::Line);
    let mut records = csv_reader(input).into_records();
    // The header, already recognised by `Shape::detect`.
    records.next();
    for record in records {
        match record {
            Ok(record) => {
                let line = record_line(&record);
                let fields: Vec<&str> = record.iter().collect();
                if let Err(reason) = csv_row(&mut builder, shape, line, &fields) {
                    builder.fail(line, reason);
                }
            }
            Err(e) => builder.fail(error_line(&e), e.to_string()),
        }
    }
    builder.finish()
}

fn csv_row(b: &mut Builder, shape: Shape, line: usize, fields: &[&str]) -> Result<(), String> {
    match (shape, fields) {
        (Shape::TotalsCsv, [slug, total]) => {
            b.total(line, parse_slug(slug)?, parse_count(total, "total")?)
        }
        (Shape::DailyCsv, [slug, day, views]) => b.day(
            line,
            parse_slug(slug)?,
            parse_day(day)?,
            parse_count(views, "views")?,
            None,
        ),
        (Shape::PresenceCsv, [SITE, day, views, buckets, read_ms, peak, at]) => {
            let given = [
                ("views", views),
                ("read_buckets", buckets),
                ("read_ms", read_ms),
            ];
            if let Some((name, _)) = given.iter().find(|(_, value)| !value.is_empty()) {
                return Err(site_sums(name));
            }
            let at = (!at.is_empty()).then_some(*at);
            let peak = row_peak(parse_count(peak, "peak")?, at)?;
            b.site_peak(line, parse_day(day)?, peak)
        }
        (Shape::PresenceCsv, [slug, day, views, buckets, read_ms, peak, at]) => {
            let buckets = buckets
                .split(' ')
                .map(|n| parse_count(n, "a read_buckets count").and_then(bucket_count))
                .collect::<Result<Vec<u32>, String>>()?;
            let at = (!at.is_empty()).then_some(*at);
            let presence = row_presence(
                Some(&buckets),
                Some(parse_count(read_ms, "read_ms")?),
                Some(parse_count(peak, "peak")?),
                at,
            )?;
            b.day(
                line,
                parse_slug(slug)?,
                parse_day(day)?,
                parse_count(views, "views")?,
                presence,
            )
        }
        (Shape::DailyCsv, _) => Err(field_count(3, "slug,day,views", fields.len())),
        (Shape::PresenceCsv, _) => Err(field_count(7, DAY_ROW_HEADER, fields.len())),
        _ => Err(field_count(2, "slug,total", fields.len())),
    }
}

/// Why the site's row may not give `name`.
fn site_sums(name: &str) -> String {
    format!(
        "the site's row ({SITE:?}) carries only peak and peak_at: leave {name} empty (the \
         site's is the sum of its posts')"
    )
}

/// A histogram bucket holds a `u32`.
fn bucket_count(n: u64) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| format!("a read_buckets count {n} is larger than {}", u32::MAX))
}

fn field_count(want: usize, header: &str, found: usize) -> String {
    format!("expected {want} fields ({header}), found {found}")
}

/// Rows are checked one by one here, so the reader must not stop at a short row itself.
fn csv_reader<R: Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(input)
}

fn record_line(record: &csv::StringRecord) -> usize {
    record.position().map_or(0, |p| to_line(p.line()))
}

fn error_line(error: &csv::Error) -> usize {
    error.position().map_or(0, |p| to_line(p.line()))
}

fn to_line(line: u64) -> usize {
    usize::try_from(line).unwrap_or(usize::MAX)
}

// ---- viewcounter's JSON ----

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonTotal {
    slug: String,
    total: u64,
}

fn parse_json(input: impl Read) -> Result<Parsed, ImportError> {
    let mut builder = Builder::new(ImportFormat::Json, Place::Element);
    let mut json = serde_json::Deserializer::from_reader(input);
    let read = serde::Deserializer::deserialize_seq(&mut json, JsonElements(&mut builder))
        .and_then(|()| json.end());
    if let Err(e) = read {
        builder.fail(e.line().max(1), json_syntax(&e));
    }
    builder.finish()
}

/// The array's elements checked one by one as they are read; the first decides whether the
/// file is daily, and an element of the other kind then fails on its fields.
struct JsonElements<'b>(&'b mut Builder);

impl<'de> serde::de::Visitor<'de> for JsonElements<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a sequence")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut daily = None;
        // An export is one line, so the element number is what finds a row.
        let mut n = 0;
        while let Some(element) = seq.next_element::<serde_json::Value>()? {
            n += 1;
            let daily = *daily.get_or_insert_with(|| {
                element.get("day").is_some() || element.get("views").is_some()
            });
            if let Err(reason) = json_element(self.0, n, element, daily) {
                self.0.fail(n, format!("element {n}: {reason}"));
            }
        }
        Ok(())
    }
}

/// serde_json's message without its trailing position, which the row error already gives.
fn json_syntax(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let message = message.split(" at line ").next().unwrap_or_default();
    format!("not valid JSON at column {}: {message}", e.column())
}

fn json_element(
    b: &mut Builder,
    n: usize,
    element: serde_json::Value,
    daily: bool,
) -> Result<(), String> {
    if !element.is_object() {
        return Err(format!("expected an object, found {element}"));
    }
    if daily {
        let row: DayRow = serde_json::from_value(element).map_err(|e| e.to_string())?;
        if row.slug == SITE {
            return json_site_row(b, n, row);
        }
        let views = row.views.ok_or("missing field `views`")?;
        let views = checked_count(views, "views")?;
        let presence = row_presence(
            row.read_buckets.as_deref(),
            row.read_ms
                .map(|n| checked_count(n, "read_ms"))
                .transpose()?,
            row.peak.map(|n| checked_count(n, "peak")).transpose()?,
            row.peak_at.as_deref(),
        )?;
        b.day(
            n,
            parse_slug(&row.slug)?,
            parse_day(&row.day)?,
            views,
            presence,
        )
    } else {
        let row: JsonTotal = serde_json::from_value(element).map_err(|e| e.to_string())?;
        b.total(
            n,
            parse_slug(&row.slug)?,
            checked_count(row.total, "total")?,
        )
    }
}

/// The site's row of a daily JSON: `peak` and `peak_at` alone.
fn json_site_row(b: &mut Builder, n: usize, row: DayRow) -> Result<(), String> {
    let given = [
        ("views", row.views.is_some()),
        ("read_buckets", row.read_buckets.is_some()),
        ("read_ms", row.read_ms.is_some()),
    ];
    if let Some((name, _)) = given.iter().find(|(_, given)| *given) {
        return Err(site_sums(name));
    }
    let live = row.peak.ok_or("missing field `peak`")?;
    let peak = row_peak(checked_count(live, "peak")?, row.peak_at.as_deref())?;
    b.site_peak(n, parse_day(&row.day)?, peak)
}

// ---- GoatCounter's CSV ----

/// Where the columns we read sit, found by name so that added columns do not matter.
struct GoatColumns {
    path: usize,
    event: usize,
    bot: usize,
    date: usize,
    width: usize,
}

fn parse_goatcounter(input: impl Read, options: &ParseOptions<'_>) -> Result<Parsed, ImportError> {
    let mut builder = Builder::new(ImportFormat::Goatcounter, Place::Line);
    let mut records = csv_reader(input).into_records();
    let header = match records.next() {
        Some(Ok(header)) => header,
        // Unreachable after recognition, but an empty header is simply no known version.
        _ => csv::StringRecord::new(),
    };
    let columns = goatcounter_columns(&header)?;
    for record in records {
        match record {
            Ok(record) => {
                let line = record_line(&record);
                let fields: Vec<&str> = record.iter().collect();
                if let Err(reason) = goat_row(&mut builder, &columns, &fields, options) {
                    builder.fail(line, reason);
                }
            }
            Err(e) => builder.fail(error_line(&e), e.to_string()),
        }
    }
    builder.finish()
}

fn goatcounter_columns(header: &csv::StringRecord) -> Result<GoatColumns, ImportError> {
    let first = header.get(0).unwrap_or_default();
    let digits = first.bytes().take_while(u8::is_ascii_digit).count();
    let (version, glued) = first.split_at(digits);
    if version != GOATCOUNTER_VERSION {
        return Err(ImportError::GoatcounterVersion {
            found: version.into(),
        });
    }
    // `2Path,…` names Path in the first field; `2,Path,…` gives the version a field of its own,
    // which the rows do not have.
    let names: Vec<&str> = std::iter::once(glued)
        .filter(|name| !name.is_empty())
        .chain(header.iter().skip(1))
        .collect();
    let find = |column: &'static str| {
        names
            .iter()
            .position(|name| *name == column)
            .ok_or(ImportError::GoatcounterColumn { column })
    };
    Ok(GoatColumns {
        path: find("Path")?,
        event: find("Event")?,
        bot: find("Bot")?,
        date: find("Date")?,
        width: names.len(),
    })
}

/// Event, Bot and Date are checked on every row, as a sign the file is whole; the path only
/// where the row counts, since event names and other sites' paths need not be slugs.
fn goat_row(
    b: &mut Builder,
    columns: &GoatColumns,
    fields: &[&str],
    options: &ParseOptions<'_>,
) -> Result<(), String> {
    if fields.len() != columns.width {
        let (want, found) = (columns.width, fields.len());
        return Err(format!("expected {want} fields, found {found}"));
    }
    let field = |i: usize| fields.get(i).copied().unwrap_or_default();
    let event = parse_event(field(columns.event))?;
    let bot = parse_bot(field(columns.bot))?;
    let day = parse_instant_day(field(columns.date), options.timezone)?;
    if event || bot {
        b.skip();
        return Ok(());
    }
    match path_slug(field(columns.path), options.path_prefix)? {
        Some(slug) => b.view(slug, day),
        None => {
            b.skip();
            Ok(())
        }
    }
}

/// Events are clicks and the like, not pageviews.
fn parse_event(raw: &str) -> Result<bool, String> {
    match raw {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("Event {raw:?} is neither true nor false")),
    }
}

/// `0` is a person; any other number is one of GoatCounter's kinds of bot.
fn parse_bot(raw: &str) -> Result<bool, String> {
    raw.parse::<i64>()
        .map(|kind| kind != 0)
        .map_err(|_| format!("Bot {raw:?} is not a number"))
}

/// The calendar day, in `timezone`, of the instant the view happened.
fn parse_instant_day(raw: &str, timezone: &TimeZone) -> Result<Date, String> {
    let instant: Timestamp = raw
        .parse()
        .map_err(|_| format!("Date {raw:?} is not a time like 2021-06-14T13:52:31Z"))?;
    Ok(timezone.to_datetime(instant).date())
}

/// The slug a GoatCounter path counts for, or `None` when it lies outside `prefix`.
fn path_slug(path: &str, prefix: Option<&str>) -> Result<Option<Slug>, String> {
    // The query and fragment vary from visit to visit; the post is the same.
    let bare = path.split(['?', '#']).next().unwrap_or_default();
    let Some(rest) = under_prefix(bare, prefix) else {
        return Ok(None);
    };
    let raw = rest.trim_matches('/');
    // The prefix's own page (`/blog/` itself) is a listing, not a post.
    if raw.is_empty() && prefix.is_some() {
        return Ok(None);
    }
    Slug::parse(raw)
        .map(Some)
        .map_err(|e| format!("path {path:?} gives no post slug: {e}"))
}

/// The rest of `path` after `prefix`, which ends at a segment boundary: `/blog` does not
/// claim `/blogger/x`. Slashes around the prefix do not matter.
fn under_prefix<'p>(path: &'p str, prefix: Option<&str>) -> Option<&'p str> {
    let prefix = prefix.unwrap_or_default().trim_matches('/');
    if prefix.is_empty() {
        return Some(path);
    }
    let rest = path.trim_start_matches('/').strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOAT_HEADER: &str = "2Path,Title,Event,UserAgent,Browser,System,Session,Bot,\
        Referrer,Referrer scheme,Screen size,Location,FirstVisit,Date";

    fn read(text: &str) -> Result<Parsed, ImportError> {
        read_as(text, None)
    }

    fn read_as(text: &str, format: Option<ImportFormat>) -> Result<Parsed, ImportError> {
        let options = ParseOptions {
            format,
            path_prefix: None,
            timezone: &TimeZone::UTC,
        };
        parse(text, &options)
    }

    fn read_goat(rows: &[&str], prefix: Option<&str>, zone: &str) -> Parsed {
        let zone = TimeZone::get(zone).expect("time zone known");
        let options = ParseOptions {
            format: None,
            path_prefix: prefix,
            timezone: &zone,
        };
        let text = goat_file(GOAT_HEADER, rows);
        parse(&text, &options).expect("file is good")
    }

    fn goat_file(header: &str, rows: &[&str]) -> String {
        let mut text = format!("{header}\n");
        for row in rows {
            text.push_str(row);
            text.push('\n');
        }
        text
    }

    /// A GoatCounter row with the fields we read; the rest as GoatCounter would fill them.
    fn goat(path: &str, event: &str, bot: &str, date: &str) -> String {
        format!(
            r#"{path},A title,{event},,Firefox 120,Linux,7,{bot},,,"1920,1080,1",DE,true,{date}"#
        )
    }

    fn slug(raw: &str) -> Slug {
        Slug::parse(raw).expect("test slug is valid")
    }

    fn date(raw: &str) -> Date {
        raw.parse().expect("test date is valid")
    }

    fn totals(pairs: &[(&str, u64)]) -> BTreeMap<Slug, u64> {
        pairs.iter().map(|&(s, n)| (slug(s), n)).collect()
    }

    fn days(rows: &[(&str, &str, u64)]) -> BTreeMap<(Slug, Date), u64> {
        rows.iter()
            .map(|&(s, d, n)| ((slug(s), date(d)), n))
            .collect()
    }

    fn bad_rows(result: Result<Parsed, ImportError>) -> (Vec<RowError>, usize) {
        match result {
            Err(ImportError::BadRows { errors, more }) => (errors, more),
            other => panic!("expected bad rows, got {other:?}"),
        }
    }

    fn lines(errors: &[RowError]) -> Vec<usize> {
        errors.iter().map(|e| e.line).collect()
    }

    #[test]
    fn a_totals_csv_gives_each_post_its_total() {
        let parsed = read("slug,total\na,3\nblog/b.html,0\nc,9223372036854775807\n").unwrap();
        assert_eq!(parsed.format, Some(ImportFormat::Csv));
        let want = totals(&[("a", 3), ("blog/b.html", 0), ("c", MAX_COUNT)]);
        assert_eq!(parsed.totals, want);
        assert!(parsed.days.is_empty());
        assert_eq!(parsed.skipped, 0);
    }

    #[test]
    fn a_daily_csv_gives_views_per_day_and_their_sum_per_post() {
        let text = "slug,day,views\na,2026-12-01,3\na,2026-12-02,4\nb,2026-12-01,1\n";
        let parsed = read(text).unwrap();
        assert_eq!(parsed.format, Some(ImportFormat::Csv));
        assert_eq!(parsed.totals, totals(&[("a", 7), ("b", 1)]));
        let want = days(&[
            ("a", "2026-12-01", 3),
            ("a", "2026-12-02", 4),
            ("b", "2026-12-01", 1),
        ]);
        assert_eq!(parsed.days, want);
    }

    #[test]
    fn a_totals_json_gives_each_post_its_total() {
        let parsed = read(r#"[{"slug":"a","total":3},{"slug":"b/c","total":0}]"#).unwrap();
        assert_eq!(parsed.format, Some(ImportFormat::Json));
        assert_eq!(parsed.totals, totals(&[("a", 3), ("b/c", 0)]));
        assert!(parsed.days.is_empty());
    }

    #[test]
    fn a_daily_json_gives_views_per_day_and_their_sum_per_post() {
        let text = r#"[{"slug":"a","day":"2026-12-01","views":3},
                       {"slug":"a","day":"2026-12-02","views":4}]"#;
        let parsed = read(text).unwrap();
        assert_eq!(parsed.format, Some(ImportFormat::Json));
        assert_eq!(parsed.totals, totals(&[("a", 7)]));
        let want = days(&[("a", "2026-12-01", 3), ("a", "2026-12-02", 4)]);
        assert_eq!(parsed.days, want);
    }

    #[test]
    fn the_sites_rows_give_its_peak_per_day_and_add_no_views_in_csv_and_json() {
        let zeros = "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0";
        let csv = format!(
            "{DAY_ROW_HEADER}\n*,2026-12-07,,,,3,2026-12-07T10:00:00Z\n*,2026-12-08,,,,0,\n\
             a,2026-12-07,1,{zeros},0,1,2026-12-07T09:00:00Z\n"
        );
        let json = r#"[{"slug":"*","day":"2026-12-07","peak":3,"peak_at":"2026-12-07T10:00:00Z"},
            {"slug":"*","day":"2026-12-08","peak":0,"peak_at":null},
            {"slug":"a","day":"2026-12-07","views":1}]"#;
        let at = "2026-12-07T10:00:00Z".parse::<Timestamp>().unwrap();
        let want = BTreeMap::from([(
            date("2026-12-07"),
            Peak {
                live: 3,
                at: at.as_second() as u64,
            },
        )]);
        for text in [csv.as_str(), json] {
            let parsed = read(text).unwrap();
            assert_eq!(parsed.site_peaks, want, "{text}");
            assert_eq!(parsed.totals, totals(&[("a", 1)]), "{text}");
            assert_eq!(parsed.days, days(&[("a", "2026-12-07", 1)]), "{text}");
        }
        // A post's row still needs its views.
        let (errors, _) = bad_rows(read(r#"[{"slug":"a","day":"2026-12-07"}]"#));
        assert!(
            errors[0].reason.contains("missing field `views`"),
            "{errors:?}"
        );
        let (errors, _) = bad_rows(read(r#"[{"slug":"*","day":"2026-12-07","read_ms":0}]"#));
        assert!(
            errors[0].reason.contains("leave read_ms empty"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_goatcounter_export_counts_one_view_per_row_per_day() {
        let rows = [
            goat("/a", "false", "0", "2021-06-14T13:52:31Z"),
            goat("/a", "false", "0", "2021-06-14T20:00:00Z"),
            goat("/a/", "false", "0", "2021-06-15T08:00:00Z"),
            goat("/b?utm_source=x#top", "false", "0", "2021-06-15T09:00:00Z"),
        ];
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        let parsed = read_goat(&rows, None, "UTC");
        assert_eq!(parsed.format, Some(ImportFormat::Goatcounter));
        assert_eq!(parsed.totals, totals(&[("a", 3), ("b", 1)]));
        let want = days(&[
            ("a", "2021-06-14", 2),
            ("a", "2021-06-15", 1),
            ("b", "2021-06-15", 1),
        ]);
        assert_eq!(parsed.days, want);
        assert_eq!(parsed.skipped, 0);
    }

    #[test]
    fn goatcounters_documented_header_with_the_version_as_its_own_field_is_read_too() {
        let header = GOAT_HEADER.replacen("2Path", "2,Path", 1);
        let text = goat_file(
            &header,
            &[&goat("/a", "false", "0", "2021-06-14T13:52:31Z")],
        );
        let parsed = read(&text).unwrap();
        assert_eq!(parsed.format, Some(ImportFormat::Goatcounter));
        assert_eq!(parsed.totals, totals(&[("a", 1)]));
    }

    #[test]
    fn each_shape_is_recognised_from_its_start() {
        let goat_text = goat_file(GOAT_HEADER, &[]);
        let cases = [
            ("slug,total\n", ImportFormat::Csv),
            ("slug,day,views\n", ImportFormat::Csv),
            ("  \n[]\n", ImportFormat::Json),
            (
                "[{\"slug\":\"a\",\"day\":\"2026-12-01\",\"views\":1}]",
                ImportFormat::Json,
            ),
            (goat_text.as_str(), ImportFormat::Goatcounter),
        ];
        for (text, want) in cases {
            assert_eq!(read(text).unwrap().format, Some(want), "{text:?}");
            assert_eq!(read_as(text, Some(want)).unwrap().format, Some(want));
        }
    }

    #[test]
    fn a_byte_order_mark_is_ignored() {
        let parsed = read("\u{feff}slug,total\na,3\n").unwrap();
        assert_eq!(parsed.totals, totals(&[("a", 3)]));
        let parsed = read("\u{feff}[{\"slug\":\"a\",\"total\":3}]").unwrap();
        assert_eq!(parsed.totals, totals(&[("a", 3)]));
    }

    #[test]
    fn windows_line_endings_and_a_blank_trailing_line_are_fine() {
        let parsed = read("slug,total\r\na,3\r\nb,4\r\n\r\n").unwrap();
        assert_eq!(parsed.totals, totals(&[("a", 3), ("b", 4)]));
    }

    #[test]
    fn an_unknown_file_is_refused_with_the_three_shapes_it_could_have_been() {
        let err = read("name,count\na,3\n").unwrap_err();
        assert!(matches!(err, ImportError::Unrecognised { .. }), "{err:?}");
        let message = err.to_string();
        for shape in [
            "\"name,count\"",
            "slug,total",
            "slug,day,views",
            "[{",
            "2Path",
        ] {
            assert!(message.contains(shape), "{message}");
        }
    }

    #[test]
    fn an_empty_file_is_refused_as_empty() {
        for text in ["", "\n\n", "\u{feff}", "  \r\n"] {
            assert!(matches!(read(text), Err(ImportError::Empty)), "{text:?}");
        }
    }

    #[test]
    fn a_given_format_that_does_not_match_says_what_was_found() {
        let text = goat_file(GOAT_HEADER, &[]);
        let err = read_as(&text, Some(ImportFormat::Csv)).unwrap_err();
        assert!(matches!(err, ImportError::WrongFormat { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("format csv expects"), "{message}");
        assert!(message.contains("GoatCounter"), "{message}");

        let err = read_as("slug,total\n", Some(ImportFormat::Json)).unwrap_err();
        assert!(err.to_string().contains("`slug,total`"), "{err}");
        let err = read_as("hello\n", Some(ImportFormat::Goatcounter)).unwrap_err();
        assert!(err.to_string().contains("\"hello\""), "{err}");
    }

    #[test]
    fn bad_rows_are_all_reported_with_their_lines_even_among_good_ones() {
        let text = "slug,day,views\n\
            a,2026-12-01,3\n\
            bad slug,2026-12-01,1\n\
            b,2026-12-01,-1\n\
            c,2026-12-01\n\
            d,2026-13-01,2\n\
            a,2026-12-01,4\n\
            e,2026-12-02,5\n";
        let (errors, more) = bad_rows(read(text));
        assert_eq!(lines(&errors), [3, 4, 5, 6, 7]);
        assert_eq!(more, 0);
        let reasons: Vec<&str> = errors.iter().map(|e| e.reason.as_str()).collect();
        assert!(reasons[0].contains("\"bad slug\""), "{}", reasons[0]);
        assert!(reasons[1].contains("\"-1\""), "{}", reasons[1]);
        assert!(reasons[2].contains("expected 3 fields"), "{}", reasons[2]);
        assert!(reasons[3].contains("\"2026-13-01\""), "{}", reasons[3]);
        assert!(reasons[4].contains("line 2"), "{}", reasons[4]);
    }

    #[test]
    fn a_duplicate_total_names_both_lines() {
        let (errors, _) = bad_rows(read("slug,total\na,1\nb,2\na,3\n"));
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 4);
        assert_eq!(
            errors[0].to_string(),
            "line 4: slug \"a\" is already given at line 2"
        );
    }

    #[test]
    fn numbers_take_no_sign_no_decimals_and_no_spaces() {
        let text = "slug,total\na,+3\nb,3.0\nc, 3\nd,\ne,18446744073709551616\n";
        let (errors, _) = bad_rows(read(text));
        assert_eq!(lines(&errors), [2, 3, 4, 5, 6]);
        assert!(errors[4].reason.contains("larger than"), "{}", errors[4]);
    }

    #[test]
    fn days_that_add_up_past_the_largest_count_are_refused_on_the_line_where_they_go_over() {
        let text = "slug,day,views\na,2026-12-01,9223372036854775800\n\
            b,2026-12-01,1\na,2026-12-02,7\na,2026-12-03,1\n";
        let (errors, _) = bad_rows(read(text));
        assert_eq!(lines(&errors), [5]);
        assert_eq!(
            errors[0].to_string(),
            "line 5: the views of \"a\" add up to more than 9223372036854775807"
        );
    }

    #[test]
    fn a_count_above_the_largest_is_refused_naming_its_line_in_every_format() {
        let too_large = "larger than the largest count, 9223372036854775807";
        let (errors, _) = bad_rows(read("slug,total\na,1\nb,9223372036854775808\n"));
        assert_eq!(lines(&errors), [3]);
        assert!(errors[0].reason.contains(too_large), "{}", errors[0]);

        let daily = "slug,day,views\na,2026-12-01,1\na,2026-12-02,18446744073709551615\n";
        let (errors, _) = bad_rows(read(daily));
        assert_eq!(lines(&errors), [3]);
        assert!(errors[0].reason.contains(too_large), "{}", errors[0]);

        let json = r#"[{"slug":"a","total":1},{"slug":"b","total":9223372036854775808}]"#;
        let (errors, _) = bad_rows(read(json));
        assert_eq!(
            errors[0].to_string(),
            format!("line 2: element 2: total 9223372036854775808 is {too_large}")
        );

        let json = r#"[{"slug":"a","day":"2026-12-01","views":18446744073709551615}]"#;
        let (errors, _) = bad_rows(read(json));
        assert_eq!(lines(&errors), [1]);
        assert!(
            errors[0].reason.starts_with("element 1: views"),
            "{}",
            errors[0]
        );
        assert!(errors[0].reason.contains(too_large), "{}", errors[0]);
    }

    /// GoatCounter has a row per view; 2⁶³ rows do not fit in a file, so the sum is started
    /// where a file of them would have brought it.
    #[test]
    fn goatcounter_views_that_add_up_past_the_largest_count_refuse_the_row_that_goes_over() {
        let mut b = Builder::new(ImportFormat::Goatcounter, Place::Line);
        let day = date("2021-06-14");
        b.add(slug("a"), Some(day), MAX_COUNT - 1).unwrap();
        b.view(slug("a"), day).unwrap();
        let err = b.view(slug("a"), day).unwrap_err();
        assert_eq!(
            err,
            "the views of \"a\" add up to more than 9223372036854775807"
        );
        assert_eq!(
            b.parsed.totals[&slug("a")],
            MAX_COUNT,
            "the refused view changed nothing"
        );
        assert_eq!(b.parsed.days[&(slug("a"), day)], MAX_COUNT);
        // Over on one day only (the total of another post's days is fine): named by its day.
        let mut b = Builder::new(ImportFormat::Goatcounter, Place::Line);
        b.parsed.days.insert((slug("c"), day), MAX_COUNT);
        let err = b.view(slug("c"), day).unwrap_err();
        assert!(
            err.ends_with("on 2021-06-14 add up to more than 9223372036854775807"),
            "{err}"
        );
    }

    #[test]
    fn json_rows_are_reported_by_element_number() {
        let text = r#"[{"slug":"a","total":1},
            {"slug":"a b","total":1},
            {"slug":"c","total":-1},
            {"slug":"d"},
            {"slug":"e","total":1,"extra":true},
            {"slug":"a","total":2},
            7]"#;
        let (errors, _) = bad_rows(read(text));
        assert_eq!(lines(&errors), [2, 3, 4, 5, 6, 7]);
        for error in &errors {
            let element = format!("element {}: ", error.line);
            assert!(error.reason.starts_with(&element), "{error}");
        }
        assert!(
            errors[2].reason.contains("missing field `total`"),
            "{}",
            errors[2]
        );
        assert!(
            errors[3].reason.contains("unknown field `extra`"),
            "{}",
            errors[3]
        );
        assert!(
            errors[4].reason.contains("already given at element 1"),
            "{}",
            errors[4]
        );
    }

    #[test]
    fn a_daily_json_refuses_bad_days_and_duplicate_days() {
        let text = r#"[{"slug":"a","day":"2026-12-01","views":1},
            {"slug":"a","day":"2026-12-1","views":1},
            {"slug":"a","day":"2026-12-01","views":2},
            {"slug":"b","total":2}]"#;
        let (errors, _) = bad_rows(read(text));
        assert_eq!(lines(&errors), [2, 3, 4]);
        assert!(errors[1].reason.contains("element 1"), "{}", errors[1]);
    }

    #[test]
    fn a_json_syntax_error_gives_its_real_line() {
        let (errors, _) = bad_rows(read("[\n{\"slug\":\"a\",\"total\":1},\n{\"slug\":}\n]"));
        assert_eq!(lines(&errors), [3]);
        assert!(
            errors[0].reason.starts_with("not valid JSON"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn only_the_first_hundred_bad_rows_are_listed_and_the_rest_counted() {
        let mut text = String::from("slug,total\n");
        for _ in 0..150 {
            text.push_str("a b,1\n");
        }
        let err = read(&text).unwrap_err();
        let message = err.to_string();
        let (errors, more) = bad_rows(Err(err));
        assert_eq!((errors.len(), more), (MAX_REPORTED, 50));
        assert_eq!(errors.last().map(|e| e.line), Some(101));
        assert!(message.starts_with("150 bad rows:\nline 2: "), "{message}");
        assert_eq!(message.lines().count(), 1 + MAX_REPORTED + 1);
        assert!(message.ends_with("\n…and 50 more"), "{message}");
    }

    #[test]
    fn goatcounter_bot_and_event_rows_are_skipped_and_counted() {
        let rows = [
            goat("/a", "false", "0", "2021-06-14T13:52:31Z"),
            goat("/a", "false", "3", "2021-06-14T13:52:32Z"),
            goat("/a", "false", "150", "2021-06-14T13:52:33Z"),
            goat("clicked the button", "true", "0", "2021-06-14T13:52:34Z"),
        ];
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        let parsed = read_goat(&rows, None, "UTC");
        assert_eq!(parsed.totals, totals(&[("a", 1)]));
        assert_eq!(parsed.skipped, 3);
    }

    #[test]
    fn a_path_prefix_maps_paths_under_it_and_skips_the_rest() {
        let at = "2021-06-14T13:52:31Z";
        let rows = [
            goat("/blog/a/b/", "false", "0", at),
            goat("/about", "false", "0", at),
            goat("/blogger/x", "false", "0", at),
            goat("/blog/", "false", "0", at),
        ];
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        let parsed = read_goat(&rows, Some("/blog/"), "UTC");
        assert_eq!(parsed.totals, totals(&[("a/b", 1)]));
        assert_eq!(parsed.skipped, 3);
    }

    #[test]
    fn a_goatcounter_view_lands_on_the_day_of_the_given_time_zone() {
        let row = goat("/a", "false", "0", "2026-11-30T23:30:00Z");
        let berlin = read_goat(&[&row], None, "Europe/Berlin");
        assert_eq!(berlin.days, days(&[("a", "2026-12-01", 1)]));
        let utc = read_goat(&[&row], None, "UTC");
        assert_eq!(utc.days, days(&[("a", "2026-11-30", 1)]));
    }

    #[test]
    fn bad_goatcounter_rows_are_reported_with_their_lines() {
        let at = "2021-06-14T13:52:31Z";
        let rows = [
            goat("/a", "false", "0", at),
            goat("/a b", "false", "0", at),
            goat("/a", "maybe", "0", at),
            goat("/a", "false", "no", at),
            goat("/a", "false", "0", "yesterday"),
            "/a,too,short".to_owned(),
            goat("/", "false", "0", at),
        ];
        let rows: Vec<&str> = rows.iter().map(String::as_str).collect();
        let (errors, _) = bad_rows(read(&goat_file(GOAT_HEADER, &rows)));
        assert_eq!(lines(&errors), [3, 4, 5, 6, 7, 8]);
        assert!(errors[0].reason.contains("path \"/a b\""), "{}", errors[0]);
        assert!(
            errors[4].reason.contains("expected 14 fields"),
            "{}",
            errors[4]
        );
        assert!(errors[5].reason.contains("path \"/\""), "{}", errors[5]);
    }

    #[test]
    fn another_goatcounter_export_version_is_refused_by_name() {
        let header = GOAT_HEADER.replacen('2', "1", 1);
        let err = read(&goat_file(&header, &[])).unwrap_err();
        assert!(matches!(&err, ImportError::GoatcounterVersion { found } if found == "1"));
        assert!(err.to_string().contains("only version 2"), "{err}");
    }

    #[test]
    fn a_goatcounter_header_without_a_needed_column_is_refused() {
        let header = GOAT_HEADER.replace(",Bot,", ",Robot,");
        let err = read(&goat_file(&header, &[])).unwrap_err();
        assert!(matches!(
            err,
            ImportError::GoatcounterColumn { column: "Bot" }
        ));
    }

    /// Renders like `viewcounter export` (and `--daily`), written out here so that this test
    /// pins the format rather than following whatever `export` does.
    fn render_like_export(daily: bool, json: bool, rows: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        match (daily, json) {
            (false, false) => out.push_str("slug,total\n"),
            (true, false) => out.push_str("slug,day,views\n"),
            (_, true) => out.push('['),
        }
        for (i, &(slug, day, n)) in rows.iter().enumerate() {
            let comma = if i == 0 { "" } else { "," };
            out.push_str(&match (daily, json) {
                (false, false) => format!("{slug},{n}\n"),
                (true, false) => format!("{slug},{day},{n}\n"),
                (false, true) => format!(r#"{comma}{{"slug":"{slug}","total":{n}}}"#),
                (true, true) => format!(r#"{comma}{{"slug":"{slug}","day":"{day}","views":{n}}}"#),
            });
        }
        if json {
            out.push_str("]\n");
        }
        out
    }

    #[test]
    fn what_export_prints_parses_back_to_the_same_totals() {
        let daily = [
            ("2024/05/my_post.html", "2026-11-30", 5),
            ("2024/05/my_post.html", "2026-12-01", 2),
            ("a", "2026-12-01", 0),
            ("b-c", "2026-12-01", MAX_COUNT),
        ];
        let all_time = [
            ("2024/05/my_post.html", "", 7),
            ("a", "", 0),
            ("b-c", "", MAX_COUNT),
        ];
        let want = totals(&[("2024/05/my_post.html", 7), ("a", 0), ("b-c", MAX_COUNT)]);
        for json in [false, true] {
            let parsed = read(&render_like_export(false, json, &all_time)).unwrap();
            assert_eq!(parsed.totals, want, "totals, json: {json}");
            let parsed = read(&render_like_export(true, json, &daily)).unwrap();
            assert_eq!(parsed.totals, want, "daily, json: {json}");
            assert_eq!(parsed.days, days(&daily), "daily, json: {json}");
        }
        // An empty db exports just the header, or `[]`: nothing to import, and no error.
        for json in [false, true] {
            let parsed = read(&render_like_export(false, json, &[])).unwrap();
            assert!(parsed.totals.is_empty());
        }
    }
}
