//! The edge: what a request is allowed to be and to do, decided before anything is counted.

pub mod client_ip;
pub(crate) mod headers;
pub(crate) mod limits;
pub mod origin;
pub mod reader_id;
pub mod slug;
pub(crate) mod slug_list;
