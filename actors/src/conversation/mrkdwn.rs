//! Markdown (what models write) to Slack mrkdwn (what Slack renders), on a real CommonMark
//! parser rather than regular expressions, so emphasis inside code, nested lists and links
//! with brackets come out right.
//!
//! | Markdown | mrkdwn |
//! |---|---|
//! | `**bold**`, `__bold__` | `*bold*` |
//! | `*italic*`, `_italic_` | `_italic_` |
//! | `~~strike~~` | `~strike~` |
//! | `[text](url)`, `<url>`, `![alt](url)` | `<url\|text>`, `<url>`, `<url\|alt>` |
//! | `# Heading` | `*Heading*` on its own line |
//! | lists | `•` bullets and `1.` numbers, indented per level |
//! | `> quote` | `> quote` |
//! | tables | a code block with aligned columns |
//! | code spans and blocks | kept byte for byte (Slack shows them verbatim) |
//!
//! Outside code, `&`, `<` and `>` are escaped as Slack requires, except Slack's own tokens
//! (`<@U…>`, `<#C…>`, `<!here>`, `<!subteam^…>`, `<https://…|…>`), which pass through.

use pulldown_cmark::{Event, LinkType, Options, Parser, Tag, TagEnd};

/// Converts Markdown to Slack mrkdwn. Never fails: anything the converter does not know is
/// kept as text.
pub fn from_markdown(markdown: &str) -> String {
    let mut w = Writer {
        at_line_start: true,
        ..Writer::default()
    };
    let options =
        Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TABLES | Options::ENABLE_TASKLISTS;
    for event in Parser::new_ext(markdown, options) {
        w.event(event);
    }
    w.flush_text();
    w.finish()
}

/// A list being written: `Some(next number)` for a numbered list.
#[derive(Debug)]
struct List {
    next: Option<u64>,
}

/// A table being collected (rendered as a code block at its end).
#[derive(Debug, Default)]
struct Table {
    rows: Vec<Vec<String>>,
    cell: Option<String>,
}

#[derive(Debug, Default)]
struct Writer {
    out: String,
    /// Nothing but whitespace since the last newline.
    at_line_start: bool,
    quote_depth: usize,
    lists: Vec<List>,
    /// Inside a fenced or indented code block.
    in_code_block: bool,
    /// Inside a heading: its text is bolded as a whole, inner bold markers are dropped.
    in_heading: bool,
    /// Inside a link or image: its text is collected plain for `<url|text>`.
    link: Option<(String, String)>,
    /// The link being collected is an e-mail autolink (`<a@b>`); Slack's
    /// `<!subteam^S1|@team>` parses as one.
    email_link: bool,
    table: Option<Table>,
    /// Consecutive text outside code, escaped as one piece (the parser may split a Slack
    /// token such as `<@U123>` over several text events).
    pending: String,
    /// A list item's marker was just written: its first paragraph continues the line.
    item_fresh: bool,
}

impl Writer {
    fn event(&mut self, event: Event<'_>) {
        let plain = self.table.is_none() && self.link.is_none() && !self.in_code_block;
        match event {
            Event::Text(t) | Event::InlineHtml(t) | Event::Html(t) if plain => {
                self.pending.push_str(&t);
                return;
            }
            _ => self.flush_text(),
        }
        if let Some(table) = &mut self.table {
            match event {
                Event::End(TagEnd::Table) => self.end_table(),
                Event::Start(Tag::TableRow | Tag::TableHead) => table.rows.push(Vec::new()),
                Event::Start(Tag::TableCell) => table.cell = Some(String::new()),
                Event::End(TagEnd::TableCell) => {
                    let cell = table.cell.take().unwrap_or_default();
                    if let Some(row) = table.rows.last_mut() {
                        row.push(cell);
                    }
                }
                Event::Text(t) | Event::Code(t) | Event::InlineHtml(t) | Event::Html(t) => {
                    if let Some(cell) = &mut table.cell {
                        cell.push_str(&t);
                    }
                }
                _ => {}
            }
            return;
        }
        if let Some((_, text)) = &mut self.link {
            match event {
                Event::End(TagEnd::Link | TagEnd::Image) => self.end_link(),
                Event::Text(t) | Event::Code(t) | Event::InlineHtml(t) => text.push_str(&t),
                Event::SoftBreak | Event::HardBreak => text.push(' '),
                _ => {}
            }
            return;
        }
        match event {
            Event::Start(tag) => self.start(tag),
            Event::End(tag) => self.end(tag),
            Event::Text(t) => self.raw(&t),
            Event::Code(t) => {
                self.item_fresh = false;
                self.line_prefix();
                self.out.push('`');
                self.out.push_str(&t);
                self.out.push('`');
            }
            Event::InlineHtml(t) | Event::Html(t) => self.raw(&t),
            Event::SoftBreak | Event::HardBreak => self.newline(),
            Event::Rule => {
                self.block_gap();
                self.line_prefix();
                self.out.push_str("──────────");
                self.newline();
            }
            Event::TaskListMarker(done) => {
                self.line_prefix();
                self.out.push_str(if done { "☑ " } else { "☐ " });
            }
            Event::FootnoteReference(t) => self.text(&format!("[{t}]")),
            Event::InlineMath(t) | Event::DisplayMath(t) => {
                self.line_prefix();
                self.out.push('`');
                self.out.push_str(&t);
                self.out.push('`');
            }
        }
    }

    fn start(&mut self, tag: Tag<'_>) {
        match tag {
            Tag::Paragraph => {
                if self.lists.is_empty() {
                    self.block_gap();
                } else if !self.item_fresh && !self.at_line_start {
                    self.newline();
                }
            }
            Tag::Heading { .. } => {
                self.block_gap();
                self.line_prefix();
                self.out.push('*');
                self.in_heading = true;
            }
            Tag::BlockQuote(_) => {
                self.block_gap();
                self.quote_depth += 1;
            }
            Tag::CodeBlock(_) => {
                // Slack ignores a language tag; an indented block becomes a fence too.
                self.block_gap();
                self.line_prefix();
                self.out.push_str("```\n");
                self.at_line_start = true;
                self.in_code_block = true;
            }
            Tag::List(start) => {
                if self.lists.is_empty() {
                    self.block_gap();
                } else if !self.at_line_start {
                    self.newline();
                }
                self.lists.push(List { next: start });
            }
            Tag::Item => {
                if !self.at_line_start {
                    self.newline();
                }
                let depth = self.lists.len().saturating_sub(1);
                self.line_prefix();
                self.out.push_str(&"    ".repeat(depth));
                let marker = match self.lists.last_mut().and_then(|l| l.next.as_mut()) {
                    Some(n) => {
                        let m = format!("{n}. ");
                        *n += 1;
                        m
                    }
                    None => "• ".to_owned(),
                };
                self.out.push_str(&marker);
                self.item_fresh = true;
            }
            Tag::Emphasis => self.mark("_"),
            Tag::Strong => {
                if !self.in_heading {
                    self.mark("*");
                }
            }
            Tag::Strikethrough => self.mark("~"),
            Tag::Link {
                link_type,
                dest_url,
                ..
            } => {
                self.line_prefix();
                self.email_link = link_type == LinkType::Email;
                self.link = Some((dest_url.into_string(), String::new()));
            }
            Tag::Image { dest_url, .. } => {
                self.line_prefix();
                self.email_link = false;
                self.link = Some((dest_url.into_string(), String::new()));
            }
            Tag::Table(_) => {
                self.block_gap();
                self.table = Some(Table::default());
            }
            Tag::HtmlBlock
            | Tag::FootnoteDefinition(_)
            | Tag::DefinitionList
            | Tag::DefinitionListTitle
            | Tag::DefinitionListDefinition
            | Tag::TableHead
            | Tag::TableRow
            | Tag::TableCell
            | Tag::MetadataBlock(_)
            | Tag::Superscript
            | Tag::Subscript => {}
        }
    }

    fn end(&mut self, tag: TagEnd) {
        match tag {
            TagEnd::Paragraph => self.newline(),
            TagEnd::Heading(_) => {
                self.out.push('*');
                self.in_heading = false;
                self.newline();
            }
            TagEnd::BlockQuote(_) => {
                self.quote_depth = self.quote_depth.saturating_sub(1);
            }
            TagEnd::CodeBlock => {
                if !self.out.ends_with('\n') {
                    self.out.push('\n');
                }
                self.out.push_str("```");
                self.in_code_block = false;
                self.newline();
            }
            TagEnd::List(_) => {
                self.lists.pop();
                if !self.at_line_start {
                    self.newline();
                }
            }
            TagEnd::Item if !self.at_line_start => self.newline(),
            TagEnd::Emphasis => self.out.push('_'),
            TagEnd::Strong if !self.in_heading => self.out.push('*'),
            TagEnd::Strikethrough => self.out.push('~'),
            _ => {}
        }
    }

    fn mark(&mut self, m: &str) {
        self.item_fresh = false;
        self.line_prefix();
        self.out.push_str(m);
    }

    fn end_link(&mut self) {
        let Some((url, text)) = self.link.take() else {
            return;
        };
        if self.email_link && slack_token_len(&format!("<{text}>")).is_some() {
            self.out.push('<');
            self.out.push_str(&text);
            self.out.push('>');
            return;
        }
        let url = escape_link_part(&url);
        let text = escape_link_part(text.trim());
        if text.is_empty() || text == url {
            self.out.push_str(&format!("<{url}>"));
        } else {
            self.out.push_str(&format!("<{url}|{text}>"));
        }
    }

    fn end_table(&mut self) {
        let Some(table) = self.table.take() else {
            return;
        };
        let columns = table.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in &table.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.trim().chars().count());
            }
        }
        self.line_prefix();
        self.out.push_str("```\n");
        for (r, row) in table.rows.iter().enumerate() {
            let cells: Vec<String> = (0..columns)
                .map(|i| {
                    let cell = row.get(i).map_or("", |c| c.trim());
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    format!("{cell}{}", " ".repeat(pad))
                })
                .collect();
            self.out.push_str(cells.join(" | ").trim_end());
            self.out.push('\n');
            if r == 0 && table.rows.len() > 1 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat((*w).max(1))).collect();
                self.out.push_str(&rule.join("-+-"));
                self.out.push('\n');
            }
        }
        self.out.push_str("```");
        self.newline();
    }

    /// Writes the collected text.
    fn flush_text(&mut self) {
        if !self.pending.is_empty() {
            let text = std::mem::take(&mut self.pending);
            self.text(&text);
        }
    }

    /// Text outside code: escaped, Slack tokens kept.
    fn text(&mut self, text: &str) {
        self.item_fresh = false;
        for (i, line) in text.split('\n').enumerate() {
            if i > 0 {
                self.newline();
            }
            if line.is_empty() {
                continue;
            }
            self.line_prefix();
            escape_into(&mut self.out, line);
        }
    }

    /// Code block content, byte for byte (a quote still needs its marker on every line).
    fn raw(&mut self, text: &str) {
        self.item_fresh = false;
        if self.quote_depth == 0 {
            self.out.push_str(text);
            self.at_line_start = text.ends_with('\n');
            return;
        }
        for piece in text.split_inclusive('\n') {
            self.line_prefix();
            self.out.push_str(piece);
            self.at_line_start = piece.ends_with('\n');
        }
    }

    /// Writes the quote markers when a line starts.
    fn line_prefix(&mut self) {
        if self.at_line_start || self.out.is_empty() {
            for _ in 0..self.quote_depth {
                self.out.push_str("> ");
            }
            self.at_line_start = false;
        }
    }

    fn newline(&mut self) {
        self.out.push('\n');
        self.at_line_start = true;
    }

    /// One blank line between blocks (none at the very start).
    fn block_gap(&mut self) {
        if self.out.is_empty() {
            return;
        }
        if !self.out.ends_with('\n') {
            self.newline();
        }
        if !self.out.ends_with("\n\n") {
            for _ in 0..self.quote_depth {
                self.out.push('>');
            }
            self.newline();
        }
    }

    fn finish(self) -> String {
        self.out.trim_end().to_owned()
    }
}

/// Appends `text` with `&`, `<`, `>` escaped, except inside Slack's own `<…>` tokens.
fn escape_into(out: &mut String, text: &str) {
    let mut rest = text;
    while let Some(pos) = rest.find(['&', '<', '>']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        if let Some(len) = slack_token_len(tail) {
            out.push_str(&tail[..len]);
            rest = &tail[len..];
            continue;
        }
        out.push_str(match tail.as_bytes()[0] {
            b'&' => "&amp;",
            b'<' => "&lt;",
            _ => "&gt;",
        });
        rest = &tail[1..];
    }
    out.push_str(rest);
}

/// Length of a Slack token at the start of `s`: `<@U…>`, `<@W…>`, `<#C…>`, `<!here>`,
/// `<!channel>`, `<!everyone>`, `<!subteam^…>`, `<!date^…>`, or a link `<http(s)://…>` /
/// `<mailto:…>` (with an optional `|label`).
fn slack_token_len(s: &str) -> Option<usize> {
    let body = s.strip_prefix('<')?;
    let end = body.find(['>', '<', '\n'])?;
    if body.as_bytes()[end] != b'>' {
        return None;
    }
    let inner = &body[..end];
    let ok = match inner.as_bytes().first()? {
        b'@' => inner[1..].starts_with(['U', 'W', 'B']),
        b'#' => inner[1..].starts_with('C'),
        b'!' => {
            let word = inner[1..].split(['^', '|']).next().unwrap_or_default();
            matches!(word, "here" | "channel" | "everyone" | "subteam" | "date")
        }
        _ => ["http://", "https://", "mailto:"]
            .iter()
            .any(|p| inner.starts_with(p)),
    };
    // A label may contain spaces (`<!subteam^S1|@on call>`); a bare token may not.
    let well_formed = !inner.contains(char::is_whitespace) || inner.contains('|');
    (ok && well_formed).then_some(end + 2)
}

/// A URL or link label inside `<url|label>`: `<`, `>` and `|` would end it early.
fn escape_link_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '|' => out.push('¦'),
            '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::from_markdown as md;

    #[test]
    fn inline_styles() {
        assert_eq!(md("**bold** and __bold__"), "*bold* and *bold*");
        assert_eq!(md("*italic* and _italic_"), "_italic_ and _italic_");
        assert_eq!(md("~~gone~~"), "~gone~");
        assert_eq!(md("***both***"), "_*both*_");
    }

    #[test]
    fn links_and_images() {
        assert_eq!(
            md("see [the runbook](https://example.com/a?b=1&c=2)"),
            "see <https://example.com/a?b=1&amp;c=2|the runbook>"
        );
        assert_eq!(md("<https://example.com>"), "<https://example.com>");
        assert_eq!(
            md("![graph](https://example.com/g.png)"),
            "<https://example.com/g.png|graph>"
        );
        assert_eq!(
            md("[a|b](https://x.io)"),
            "<https://x.io|a¦b>",
            "a pipe would end the label"
        );
    }

    #[test]
    fn headings_become_bold_lines() {
        assert_eq!(
            md("# Status\nAll good.\n\n## Next **steps**"),
            "*Status*\n\nAll good.\n\n*Next steps*"
        );
    }

    #[test]
    fn lists_are_kept() {
        assert_eq!(
            md("- one\n- two\n  - nested\n- three"),
            "• one\n• two\n    • nested\n• three"
        );
        assert_eq!(md("1. first\n2. second"), "1. first\n2. second");
        assert_eq!(md("3. third\n4. fourth"), "3. third\n4. fourth");
        assert_eq!(md("- [x] done\n- [ ] open"), "• ☑ done\n• ☐ open");
    }

    #[test]
    fn code_is_untouched() {
        let text = "run `kubectl get pods -l app=<name> | grep **x**`";
        assert_eq!(
            md(text),
            "run `kubectl get pods -l app=<name> | grep **x**`"
        );
        let block = "```bash\necho \"a < b && c > d\" **not bold**\n  indented\n```";
        assert_eq!(
            md(block),
            "```\necho \"a < b && c > d\" **not bold**\n  indented\n```"
        );
        assert_eq!(md("    indented code\n"), "```\nindented code\n```");
    }

    #[test]
    fn escapes_outside_code_and_keeps_slack_tokens() {
        assert_eq!(md("a < b & c > d"), "a &lt; b &amp; c &gt; d");
        assert_eq!(
            md("ping <@U024BE7LH> in <#C024BE7LR> <!here> <!subteam^S123|@oncall>"),
            "ping <@U024BE7LH> in <#C024BE7LR> <!here> <!subteam^S123|@oncall>"
        );
        assert_eq!(
            md("<script>alert(1)</script>"),
            "&lt;script&gt;alert(1)&lt;/script&gt;"
        );
        assert_eq!(
            md("AT&amp;T"),
            "AT&amp;T",
            "an entity is decoded, then escaped once"
        );
        assert_eq!(md("AT&T"), "AT&amp;T");
    }

    #[test]
    fn quotes_and_rules() {
        assert_eq!(md("> quoted\n> more"), "> quoted\n> more");
        assert_eq!(md("a\n\n---\n\nb"), "a\n\n──────────\n\nb");
    }

    #[test]
    fn tables_become_code_blocks() {
        let table =
            "| pod | status |\n|---|---|\n| api-1 | Running |\n| worker | CrashLoopBackOff |";
        assert_eq!(
            md(table),
            "```\npod    | status\n-------+-----------------\napi-1  | Running\nworker | CrashLoopBackOff\n```"
        );
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(md("Everything is fine."), "Everything is fine.");
        assert_eq!(md("line one\nline two"), "line one\nline two");
        assert_eq!(md("para one\n\npara two"), "para one\n\npara two");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::from_markdown;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any input converts, and no Markdown emphasis marker pair survives unconverted.
        #[test]
        fn any_input_converts(input in "(?s).{0,400}") {
            let _ = from_markdown(&input);
        }

        /// Markdown-heavy input (the characters that drive the parser) converts too.
        #[test]
        fn markdown_soup_converts(input in "[-*_~`#>|\\[\\]()!<>&@\\\\ \na-z0-9.:/]{0,300}") {
            let _ = from_markdown(&input);
        }

        /// The content of a fenced code block comes out byte for byte.
        #[test]
        fn code_blocks_are_preserved(
            before in "[a-zA-Z *_#>-]{0,40}",
            code in "([ -~&&[^`]]{0,60}\n){1,8}",
        ) {
            let text = format!("{before}\n\n```\n{code}```\n");
            let out = from_markdown(&text);
            prop_assert!(out.contains(&code), "code block content changed:\n{out}");
        }

        /// A code span's content comes out byte for byte.
        #[test]
        fn code_spans_are_preserved(code in "[!-~&&[^`]]([ -~&&[^`]]{0,30}[!-~&&[^`]])?") {
            let out = from_markdown(&format!("run `{code}` now"));
            let expected = format!("`{code}`");
            prop_assert!(out.contains(&expected), "{out}");
        }
    }
}
