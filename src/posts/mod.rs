//! The posts: one actor per post being read, and the registry that wakes them.
//!
//! Below HTTP and the cluster, and calling neither: a post broadcasts [`update::Update`]s (the
//! events encoded once) that streams forward, and counts its views through its port,
//! `cluster_port::Counting`: [`local_counting`] on a single node, the cluster's in cluster
//! mode (the only way posts reach the other nodes).

pub(crate) mod alert_port;
pub(crate) mod changes;
pub(crate) mod cluster_port;
pub(crate) mod local_counting;
pub(crate) mod peaks;
pub mod post;
pub(crate) mod post_state;
pub(crate) mod pulse;
pub(crate) mod registry;
pub(crate) mod site;
pub mod update;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The posts sit below the cluster and reach it only through their port. `.ci/cycles.py`
    /// sees a path to the cluster here only as a cycle (so only while the cluster imports the
    /// posts) and never in a test module: a test double must not use the real cluster either.
    #[test]
    fn no_file_of_the_posts_names_the_cluster() {
        let posts = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/posts");
        // Spelt in pieces, so that this file does not name it either.
        let paths = ["crate::", "crate::{", "super::super::"].map(|to| format!("{to}cluster"));
        let mut named = Vec::new();
        for file in std::fs::read_dir(&posts).unwrap() {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code: String = line
                    .split("//")
                    .next()
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect();
                if paths.iter().any(|p| code.contains(p.as_str())) {
                    named.push(format!("{}:{}: {line}", path.display(), n + 1));
                }
            }
        }
        assert!(
            named.is_empty(),
            "posts name the cluster:\n{}",
            named.join("\n")
        );
        assert!(
            posts.join("post.rs").exists(),
            "the posts are where this test looks"
        );
    }
}
