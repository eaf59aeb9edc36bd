//! An import a running server takes in pieces (`viewcounter import` of a file larger than one
//! request may carry): the pieces are staged here, checked as they come, and applied together
//! at the commit, or not at all. One session at a time: the staged rows are bounded by
//! [`MAX_STAGED_ROWS`], and a session left idle for its time is dropped unapplied.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::import::file::Parsed;
use crate::refusal::Refusal;
use crate::storage::MAX_COUNT;
use crate::storage::writer::ImportMode;

/// Posts and post-days one session may stage (about 100 bytes each in memory): far more than
/// a blog's posts times the days it has been read.
pub(crate) const MAX_STAGED_ROWS: usize = 2_000_000;

/// How long a session may go without a piece before it is dropped.
pub(crate) const DEFAULT_IDLE: Duration = Duration::from_secs(120);

/// The open session, if any.
pub(crate) struct Sessions {
    idle: Duration,
    open: Mutex<Option<Session>>,
}

struct Session {
    id: String,
    mode: ImportMode,
    dry_run: bool,
    staged: Parsed,
    /// Whether the pieces are views per day (else all-time totals): every piece is the same.
    daily: Option<bool>,
    pieces: usize,
    touched: Instant,
}

/// What a commit applies.
pub(crate) struct Staged {
    pub parsed: Parsed,
    pub mode: ImportMode,
    pub dry_run: bool,
}

impl Sessions {
    pub(crate) fn new(idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle,
            open: Mutex::new(None),
        })
    }

    fn open(&self) -> MutexGuard<'_, Option<Session>> {
        // A panic while staging leaves at worst a session that is refused at its commit.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a session and answers its id; refused while another is open and not idle.
    pub(crate) fn begin(
        self: &Arc<Self>,
        mode: ImportMode,
        dry_run: bool,
    ) -> Result<String, Refusal> {
        let id = new_id()?;
        {
            let mut open = self.open();
            if let Some(other) = open.as_ref() {
                let idle_for = other.touched.elapsed();
                if idle_for < self.idle {
                    return Err(Refusal::ImportBusy {
                        retry_after: self.idle - idle_for,
                    });
                }
            }
            *open = Some(Session {
                id: id.clone(),
                mode,
                dry_run,
                staged: Parsed::default(),
                daily: None,
                pieces: 0,
                touched: Instant::now(),
            });
        }
        self.expire_when_idle(id.clone());
        Ok(id)
    }

    /// Stages a piece; a piece that does not fit with the earlier ones ends the session.
    /// Answers the pieces staged so far.
    pub(crate) fn add(&self, id: &str, piece: Parsed) -> Result<usize, Refusal> {
        let mut open = self.open();
        let session = open
            .as_mut()
            .filter(|s| s.id == id)
            .ok_or(Refusal::NoImportSession)?;
        match session.stage(piece) {
            Ok(()) => Ok(session.pieces),
            Err(reason) => {
                let n = session.pieces + 1;
                *open = None;
                Err(Refusal::BadRequest(format!(
                    "piece {n} refused, nothing of this import was applied: {reason}"
                )))
            }
        }
    }

    /// Ends the session, answering what to apply.
    pub(crate) fn take(&self, id: &str) -> Result<Staged, Refusal> {
        let mut open = self.open();
        match open.take() {
            Some(s) if s.id == id => Ok(Staged {
                parsed: s.staged,
                mode: s.mode,
                dry_run: s.dry_run,
            }),
            other => {
                *open = other;
                Err(Refusal::NoImportSession)
            }
        }
    }

    /// Drops the session unapplied; whether it was open.
    pub(crate) fn abort(&self, id: &str) -> bool {
        self.take(id).is_ok()
    }

    /// Drops the session once it has been idle for [`Self::idle`], freeing what it staged.
    fn expire_when_idle(self: &Arc<Self>, id: String) {
        let sessions = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let deadline = match sessions.open().as_ref() {
                    Some(s) if s.id == id => s.touched + sessions.idle,
                    _ => return,
                };
                tokio::time::sleep_until(deadline.into()).await;
                let mut open = sessions.open();
                if open
                    .as_ref()
                    .is_some_and(|s| s.id == id && s.touched.elapsed() >= sessions.idle)
                {
                    *open = None;
                    tracing::info!(id, "an import session went idle; dropped, nothing applied");
                    return;
                }
            }
        });
    }
}

impl Session {
    fn stage(&mut self, piece: Parsed) -> Result<(), String> {
        self.touched = Instant::now();
        let staged = &mut self.staged;
        staged.skipped += piece.skipped;
        if !piece.totals.is_empty() || !piece.site_peaks.is_empty() {
            let daily = !piece.days.is_empty() || !piece.site_peaks.is_empty();
            if *self.daily.get_or_insert(daily) != daily {
                return Err("pieces of totals and pieces of days do not mix".into());
            }
            if daily {
                for (day, peak) in piece.site_peaks {
                    if staged.site_peaks.insert(day, peak).is_some() {
                        return Err(format!("the site on {day} is in an earlier piece"));
                    }
                }
                for (key, views) in piece.days {
                    if staged.days.contains_key(&key) {
                        let (slug, day) = key;
                        return Err(format!("slug {slug:?} on {day} is in an earlier piece"));
                    }
                    staged.days.insert(key, views);
                }
                // Its days are new to the session (checked just above), and so is their presence.
                staged.presence.extend(piece.presence);
                for (slug, views) in piece.totals {
                    let old = staged.totals.get(&slug).copied().unwrap_or(0);
                    let total = old
                        .checked_add(views)
                        .filter(|&sum| sum <= MAX_COUNT)
                        .ok_or_else(|| {
                            format!("the views of {slug:?} add up to more than {MAX_COUNT}")
                        })?;
                    staged.totals.insert(slug, total);
                }
            } else {
                for (slug, total) in piece.totals {
                    if staged.totals.contains_key(&slug) {
                        return Err(format!("slug {slug:?} is in an earlier piece"));
                    }
                    staged.totals.insert(slug, total);
                }
            }
        }
        if staged.days.len() + staged.totals.len() + staged.site_peaks.len() > MAX_STAGED_ROWS {
            return Err(format!(
                "more than {MAX_STAGED_ROWS} posts and days in one import"
            ));
        }
        self.pieces += 1;
        Ok(())
    }
}

fn new_id() -> Result<String, Refusal> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Refusal::Internal(format!("no random id: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
