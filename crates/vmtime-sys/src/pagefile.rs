//! Publishing a page file: kept for the callers that write a page once (`vmtime gen`). The
//! rules (what may be replaced, O_EXCL temporaries, fsync, rename, locks) live in
//! [`crate::files`].

pub use crate::files::{create_page as create, open_page as open_existing, FileError, PageFile};
