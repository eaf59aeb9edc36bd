//! The port through which a post says it took off (`--alert-live N`): implemented by
//! [`crate::alerts`], which sends the messages; a post only checks a number and hands over.

use crate::edge::slug::Slug;
use crate::posts::post_state::Counts;

pub(crate) trait Alerts: Send + Sync {
    /// Live readers (over the cluster) at which a post alerts.
    fn threshold(&self) -> u64;
    /// The post just reached [`Alerts::threshold`]. Called on the counting path: it must
    /// neither wait nor fail.
    fn reached(&self, slug: &Slug, counts: Counts);
}
