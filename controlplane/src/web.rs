//! The web apps embedded in the binary, served on the REST port.
//!
//! The sources live in `web/` (see `web/README.md`); they are compiled in with
//! `include_bytes!` so the server needs no files at run time. `web/test/` (jsdom smoke
//! tests) is not embedded.

/// An embedded file.
pub struct Page {
    pub content_type: &'static str,
    pub body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every embedded file: (path served, content type, contents). `/` is `index.html`.
const PAGES: &[(&str, &str, &[u8])] = &[
    ("/index.html", HTML, include_bytes!("../../web/index.html")),
    ("/index.js", JS, include_bytes!("../../web/index.js")),
    (
        "/two-way.html",
        HTML,
        include_bytes!("../../web/two-way.html"),
    ),
    ("/two-way.js", JS, include_bytes!("../../web/two-way.js")),
    (
        "/player.html",
        HTML,
        include_bytes!("../../web/player.html"),
    ),
    ("/player.js", JS, include_bytes!("../../web/player.js")),
    ("/relay.html", HTML, include_bytes!("../../web/relay.html")),
    ("/relay.js", JS, include_bytes!("../../web/relay.js")),
    (
        "/relaycast.js",
        JS,
        include_bytes!("../../web/relaycast.js"),
    ),
    ("/common.js", JS, include_bytes!("../../web/common.js")),
    ("/style.css", CSS, include_bytes!("../../web/style.css")),
];

/// The embedded file served at `path` (the URL path, without the query string), if any.
pub fn page(path: &str) -> Option<Page> {
    let path = if path == "/" { "/index.html" } else { path };
    PAGES
        .iter()
        .find(|(served, _, _)| *served == path)
        .map(|&(_, content_type, body)| Page { content_type, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_the_landing_page() {
        let root = page("/").expect("/ is served");
        let index = page("/index.html").expect("/index.html is served");
        assert_eq!(root.body, index.body);
        assert_eq!(root.content_type, HTML);
        assert!(std::str::from_utf8(root.body).unwrap().contains("<html"));
    }

    #[test]
    fn every_page_is_served_with_its_content_type() {
        for (path, content_type) in [
            ("/index.html", HTML),
            ("/index.js", JS),
            ("/two-way.html", HTML),
            ("/two-way.js", JS),
            ("/player.html", HTML),
            ("/player.js", JS),
            ("/relay.html", HTML),
            ("/relay.js", JS),
            ("/relaycast.js", JS),
            ("/common.js", JS),
            ("/style.css", CSS),
        ] {
            let served = page(path).unwrap_or_else(|| panic!("{path} is not served"));
            assert_eq!(served.content_type, content_type, "{path}");
            assert!(!served.body.is_empty(), "{path} is empty");
            assert!(
                std::str::from_utf8(served.body).is_ok(),
                "{path} is not UTF-8"
            );
        }
    }

    #[test]
    fn unknown_paths_are_not_pages() {
        for path in [
            "",
            "/nope.html",
            "/index.htm",
            "/test/harness.js",
            "/test/package.json",
            "/README.md",
            "/flashphoner.js",
            "/rest-api/server/info",
            "index.html",
            "/index.html/",
            "//index.html",
            "/../web/index.html",
        ] {
            assert!(page(path).is_none(), "{path:?} should not be served");
        }
    }

    #[test]
    fn html_references_only_embedded_files() {
        for &(path, content_type, body) in PAGES {
            if content_type != HTML {
                continue;
            }
            let html = std::str::from_utf8(body).unwrap();
            for target in references(html) {
                if target.starts_with("data:")
                    || target.starts_with('#')
                    || target.starts_with("/rest-api/")
                {
                    continue;
                }
                assert!(
                    !target.contains("://") && !target.starts_with("//"),
                    "{path} references another host: {target}"
                );
                let target = target.split(['?', '#']).next().unwrap_or_default();
                let absolute = match target.strip_prefix("./") {
                    Some(rest) => format!("/{rest}"),
                    None if target.starts_with('/') => target.to_string(),
                    None => format!("/{target}"),
                };
                assert!(
                    page(&absolute).is_some(),
                    "{path} references {target}, not embedded"
                );
            }
        }
    }

    /// The values of every `src="..."` and `href="..."` attribute.
    fn references(html: &str) -> Vec<&str> {
        let mut found = Vec::new();
        for attribute in ["src=\"", "href=\""] {
            let mut rest = html;
            while let Some(start) = rest.find(attribute) {
                rest = &rest[start + attribute.len()..];
                let end = rest.find('"').expect("attribute values are closed");
                found.push(&rest[..end]);
                rest = &rest[end..];
            }
        }
        found
    }
}
