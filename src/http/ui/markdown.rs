//! Markdown to HTML that is safe to put in a page whatever the data says: raw HTML in the source is shown as
//! text (never passed through), and links or images may only point at http(s), mailto or relative URLs.

use pulldown_cmark::{CowStr, Event, Options, Parser, Tag, TagEnd, html};

fn safe_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    match lower.find(':') {
        // A scheme is whatever comes before the first ':' if no '/', '?' or '#' comes earlier.
        Some(i) if !lower[..i].contains(['/', '?', '#']) => {
            matches!(&lower[..i], "http" | "https" | "mailto")
        }
        _ => true,
    }
}

fn clean_url(url: CowStr<'_>) -> CowStr<'_> {
    if safe_url(&url) {
        url
    } else {
        CowStr::from("#")
    }
}

/// Renders Markdown (with tables and strikethrough) to HTML with every raw HTML fragment escaped.
/// Images become links to the image: the pages load nothing from elsewhere.
pub fn render(source: &str) -> String {
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let events = Parser::new_ext(source, options).map(|event| match event {
        Event::Html(s) | Event::InlineHtml(s) => Event::Text(s),
        Event::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        })
        | Event::Start(Tag::Image {
            link_type,
            dest_url,
            title,
            id,
        }) => Event::Start(Tag::Link {
            link_type,
            dest_url: clean_url(dest_url),
            title,
            id,
        }),
        Event::End(TagEnd::Image) => Event::End(TagEnd::Link),
        other => other,
    });
    let mut out = String::with_capacity(source.len() * 3 / 2);
    html::push_html(&mut out, events);
    out
}

#[cfg(test)]
mod tests {
    use super::render;

    #[test]
    fn raw_html_is_text() {
        let out = render("hi <script>alert(1)</script>\n\n<div onclick=x>block</div>");
        assert!(!out.contains("<script"), "{out}");
        assert!(!out.contains("<div"), "{out}");
        assert!(
            out.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{out}"
        );
    }

    #[test]
    fn markdown_and_code_render() {
        let out = render("**bold**\n\n```rust\nfn main() { 1 < 2; }\n```");
        assert!(out.contains("<strong>bold</strong>"), "{out}");
        assert!(out.contains("<pre><code class=\"language-rust\">"), "{out}");
        assert!(out.contains("1 &lt; 2"), "{out}");
    }

    #[test]
    fn dangerous_links_are_neutralised() {
        let out =
            render("[x](javascript:alert(1)) [y](https://example.org) ![i](data:text/html,hi)");
        assert!(!out.contains("javascript:"), "{out}");
        assert!(!out.contains("data:"), "{out}");
        assert!(out.contains("href=\"https://example.org\""), "{out}");
        assert!(!out.contains("<img"), "{out}");
    }
}
