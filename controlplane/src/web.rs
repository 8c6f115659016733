//! The web apps embedded in the binary, served on the REST port.

/// An embedded file.
pub struct Page {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

/// The embedded file served at `path`, if any.
pub fn page(path: &str) -> Option<Page> {
    let _ = path;
    None
}
