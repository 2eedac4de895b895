//! The page template language, parsed once at load: `{{name}}` placeholders and
//! `{{#retry}}…{{/retry}}`, `{{#wait}}…{{/wait}}`, `{{#link}}…{{/link}}` and
//! `{{#notice}}…{{/notice}}` blocks. A template is first
//! parsed into [`Token`]s (syntax checked, every problem collected), then bound
//! to one language and page kind into [`Seg`]s, where only the values that vary
//! per response are left open; rendering is then a walk that appends strings.

/// The strings of the `[ui]` table of a language file, shared by all kinds.
pub(crate) const UI_FIELDS: [(&str, &str); 10] = [
    ("request_id_label", "the label shown before the request id"),
    (
        "request_id_hint",
        "a sentence asking to mention the request id to customer service",
    ),
    (
        "retry_hint",
        "when to try again, with {{retry_after}} for the seconds",
    ),
    (
        "wait_hint",
        "the estimated wait, with {{wait_seconds}} for the seconds",
    ),
    (
        "refresh_hint",
        "that the waiting page reloads itself, with {{retry_after}} for the seconds",
    ),
    ("refresh_now", "the text of the link that reloads at once"),
    (
        "orders_link",
        "the text of the link to the shopper's orders (a route's idempotency.orders_url)",
    ),
    (
        "wait_long_hint",
        "an estimated wait of two minutes or more, with {{wait_minutes}} for the minutes",
    ),
    (
        "position_hint",
        "the shopper's place in the waiting room's line, with {{position}} and {{ahead}}",
    ),
    (
        "opens_hint",
        "that the waiting room opens in {{opens_in}} seconds and places are drawn then",
    ),
];

/// The texts every page kind has in a language file.
pub(crate) const KIND_FIELDS: [(&str, &str); 3] = [
    ("title", "the page heading"),
    ("message", "what happened, in the shopper's words"),
    ("advice", "what the shopper should do now"),
];

/// From this many seconds on, an estimated wait is said in minutes
/// (`{{#wait_long}}`) rather than seconds (`{{#wait}}`).
pub(crate) const LONG_WAIT: u32 = 120;

/// A value that is only known when a response is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dynamic {
    /// The HTTP status (varies for `upstream_status`).
    Status,
    /// The request id.
    RequestId,
    /// Seconds of Retry-After; empty when there is none.
    RetryAfter,
    /// Seconds of estimated wait; empty when unknown.
    WaitSeconds,
    /// Minutes of estimated wait (rounded); empty when unknown.
    WaitMinutes,
    /// Where the shopper sees their orders (a route's setting); empty when unset.
    Link,
    /// The operator's own words (a maintenance message); empty when unset.
    Notice,
    /// Place in the waiting room's line, from 1; empty when unknown.
    Position,
    /// Tickets ahead in the waiting room's line; empty when unknown.
    Ahead,
    /// Seconds until the waiting room opens; empty when open.
    OpensIn,
}

/// A section shown only when its value is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Block {
    /// Shown when the response has a Retry-After.
    Retry,
    /// Shown when an estimated wait is known and shorter than [`LONG_WAIT`]
    /// (said in seconds).
    Wait,
    /// Shown when an estimated wait is [`LONG_WAIT`] or longer (said in minutes).
    WaitLong,
    /// Shown when the page links to the shopper's orders.
    Link,
    /// Shown when the operator wrote a notice.
    Notice,
    /// Shown when the shopper's place in the waiting room's line is known.
    Position,
    /// Shown while the waiting room has not opened yet.
    Opens,
}

impl Block {
    fn name(self) -> &'static str {
        match self {
            Block::Retry => "retry",
            Block::Wait => "wait",
            Block::WaitLong => "wait_long",
            Block::Link => "link",
            Block::Notice => "notice",
            Block::Position => "position",
            Block::Opens => "opens",
        }
    }

    fn from_name(name: &str) -> Option<Block> {
        match name {
            "retry" => Some(Block::Retry),
            "wait" => Some(Block::Wait),
            "wait_long" => Some(Block::WaitLong),
            "link" => Some(Block::Link),
            "notice" => Some(Block::Notice),
            "position" => Some(Block::Position),
            "opens" => Some(Block::Opens),
            _ => None,
        }
    }
}

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// The language tag, e.g. `zh-CN`.
    Lang,
    /// The page kind, e.g. `upstream_timeout`.
    Code,
    /// `title`, `message` or `advice` of the page kind, by index in [`KIND_FIELDS`].
    Kind(usize),
    /// A `[ui]` string, by index in [`UI_FIELDS`].
    Ui(usize),
    /// A per-response value.
    Dyn(Dynamic),
}

const DYNAMIC: [(&str, Dynamic); 10] = [
    ("status", Dynamic::Status),
    ("request_id", Dynamic::RequestId),
    ("retry_after", Dynamic::RetryAfter),
    ("wait_seconds", Dynamic::WaitSeconds),
    ("wait_minutes", Dynamic::WaitMinutes),
    ("link", Dynamic::Link),
    ("notice", Dynamic::Notice),
    ("position", Dynamic::Position),
    ("ahead", Dynamic::Ahead),
    ("opens_in", Dynamic::OpensIn),
];

/// Where a placeholder may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// An HTML template: every placeholder and the blocks.
    Template,
    /// A `[ui]` string: only per-response values, no blocks.
    Ui,
}

impl Scope {
    fn field(self, name: &str) -> Option<Field> {
        if let Some((_, d)) = DYNAMIC.iter().find(|(n, _)| *n == name) {
            return Some(Field::Dyn(*d));
        }
        if self == Scope::Ui {
            return None;
        }
        match name {
            "lang" => Some(Field::Lang),
            "code" => Some(Field::Code),
            _ => KIND_FIELDS
                .iter()
                .position(|(n, _)| *n == name)
                .map(Field::Kind)
                .or_else(|| {
                    UI_FIELDS
                        .iter()
                        .position(|(n, _)| *n == name)
                        .map(Field::Ui)
                }),
        }
    }

    fn known(self) -> String {
        let mut names: Vec<&str> = Vec::new();
        if self == Scope::Template {
            names.extend(["lang", "code"]);
            names.extend(KIND_FIELDS.iter().map(|(n, _)| *n));
        }
        names.extend(DYNAMIC.iter().map(|(n, _)| *n));
        if self == Scope::Template {
            names.extend(UI_FIELDS.iter().map(|(n, _)| *n));
        }
        names
            .iter()
            .map(|n| format!("{{{{{n}}}}}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Parsed template syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Token {
    /// Text copied as it is (template HTML) or escaped (a `[ui]` string).
    Text(String),
    /// A placeholder.
    Field(Field),
    /// A block and its content.
    Block(Block, Vec<Token>),
}

/// Parses `source`; every problem comes back as `line N: what to fix`.
pub(crate) fn parse(source: &str, scope: Scope) -> Result<Vec<Token>, Vec<String>> {
    let mut problems = Vec::new();
    // Open blocks: the block, the line it was opened on, and the tokens before it.
    let mut open: Vec<(Block, usize, Vec<Token>)> = Vec::new();
    let mut tokens = Vec::new();
    let mut rest = source;
    let line_of = |rest: &str| source[..source.len() - rest.len()].matches('\n').count() + 1;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            tokens.push(Token::Text(rest[..start].to_owned()));
        }
        let line = line_of(&rest[start..]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            problems.push(format!(
                "line {line}: \"{{{{\" is never closed; write placeholders as {{{{name}}}}"
            ));
            rest = "";
            break;
        };
        let inner = after[..end].trim();
        rest = &after[end + 2..];
        if let Some(name) = inner.strip_prefix('#') {
            let name = name.trim();
            match Block::from_name(name) {
                Some(block) if scope == Scope::Template => {
                    open.push((block, line, std::mem::take(&mut tokens)));
                }
                Some(_) => problems.push(format!(
                    "line {line}: blocks such as {{{{#{name}}}}} belong in the HTML templates, not in language texts"
                )),
                None => problems.push(format!(
                    "line {line}: unknown block {{{{#{name}}}}}; the blocks are {{{{#retry}}}}…{{{{/retry}}}}, {{{{#wait}}}}…{{{{/wait}}}}, {{{{#wait_long}}}}…{{{{/wait_long}}}}, {{{{#link}}}}…{{{{/link}}}}, {{{{#notice}}}}…{{{{/notice}}}}, {{{{#position}}}}…{{{{/position}}}} and {{{{#opens}}}}…{{{{/opens}}}}"
                )),
            }
        } else if let Some(name) = inner.strip_prefix('/') {
            let name = name.trim();
            match (open.last(), Block::from_name(name)) {
                (Some((block, _, _)), Some(closing)) if *block == closing => {
                    if let Some((block, _, before)) = open.pop() {
                        let content = std::mem::replace(&mut tokens, before);
                        tokens.push(Token::Block(block, content));
                    }
                }
                (Some((block, opened, _)), _) => problems.push(format!(
                    "line {line}: {{{{/{name}}}}} does not close {{{{#{}}}}} opened on line {opened}; close blocks in the order they were opened",
                    block.name()
                )),
                (None, _) => problems.push(format!(
                    "line {line}: {{{{/{name}}}}} closes no block; remove it or add the matching {{{{#{name}}}}} before it"
                )),
            }
        } else {
            match scope.field(inner) {
                Some(field) => tokens.push(Token::Field(field)),
                None if scope == Scope::Ui => problems.push(format!(
                    "line {line}: {{{{{inner}}}}} cannot be used here; [ui] strings may use {}",
                    scope.known()
                )),
                None => problems.push(format!(
                    "line {line}: unknown placeholder {{{{{inner}}}}}; known placeholders: {}",
                    scope.known()
                )),
            }
        }
    }
    if !rest.is_empty() {
        tokens.push(Token::Text(rest.to_owned()));
    }
    while let Some((block, opened, before)) = open.pop() {
        let name = block.name();
        problems.push(format!(
            "line {opened}: {{{{#{name}}}}} is never closed; add {{{{/{name}}}}} where the section ends"
        ));
        tokens = before;
    }
    if problems.is_empty() {
        Ok(tokens)
    } else {
        Err(problems)
    }
}

/// A template bound to one language and page kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seg {
    /// Finished HTML.
    Lit(String),
    /// A per-response value, escaped when rendered.
    Dyn(Dynamic),
    /// A section shown only when its value is known.
    Block(Block, Vec<Seg>),
}

/// The fixed values a template is bound to.
pub(crate) struct Binding<'a> {
    /// Language tag.
    pub(crate) lang: &'a str,
    /// Page kind.
    pub(crate) code: &'a str,
    /// title, message, advice (plain text).
    pub(crate) kind: [&'a str; 3],
    /// The parsed `[ui]` strings, in [`UI_FIELDS`] order.
    pub(crate) ui: &'a [Vec<Token>],
}

/// Resolves every fixed placeholder of `tokens` to escaped HTML.
pub(crate) fn bind(tokens: &[Token], binding: &Binding<'_>) -> Vec<Seg> {
    let mut segs = Vec::new();
    bind_into(tokens, binding, false, &mut segs);
    segs
}

fn bind_into(tokens: &[Token], binding: &Binding<'_>, plain: bool, segs: &mut Vec<Seg>) {
    for token in tokens {
        match token {
            Token::Text(text) if plain => push_lit(segs, &escape_html(text)),
            Token::Text(text) => push_lit(segs, text),
            Token::Field(Field::Lang) => push_lit(segs, &escape_html(binding.lang)),
            Token::Field(Field::Code) => push_lit(segs, &escape_html(binding.code)),
            Token::Field(Field::Kind(i)) => {
                push_lit(
                    segs,
                    &escape_html(binding.kind.get(*i).copied().unwrap_or("")),
                );
            }
            Token::Field(Field::Ui(i)) => {
                if let Some(ui) = binding.ui.get(*i) {
                    bind_into(ui, binding, true, segs);
                }
            }
            Token::Field(Field::Dyn(d)) => segs.push(Seg::Dyn(*d)),
            Token::Block(block, content) => {
                let mut inner = Vec::new();
                bind_into(content, binding, plain, &mut inner);
                segs.push(Seg::Block(*block, inner));
            }
        }
    }
}

fn push_lit(segs: &mut Vec<Seg>, text: &str) {
    if text.is_empty() {
        return;
    }
    if let Some(Seg::Lit(last)) = segs.last_mut() {
        last.push_str(text);
    } else {
        segs.push(Seg::Lit(text.to_owned()));
    }
}

/// The per-response values.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Values<'a> {
    /// HTTP status.
    pub(crate) status: u16,
    /// Request id (escaped when written).
    pub(crate) request_id: &'a str,
    /// Retry-After seconds.
    pub(crate) retry_after: Option<u32>,
    /// Estimated wait seconds.
    pub(crate) wait_seconds: Option<u32>,
    /// Link to the shopper's orders (escaped when written).
    pub(crate) link: Option<&'a str>,
    /// The operator's notice (escaped when written).
    pub(crate) notice: Option<&'a str>,
    /// Place in the waiting room's line.
    pub(crate) position: Option<u64>,
    /// Tickets ahead in the waiting room's line.
    pub(crate) ahead: Option<u64>,
    /// Seconds until the waiting room opens.
    pub(crate) opens_in: Option<u32>,
}

/// Appends the page to `out`.
pub(crate) fn render(segs: &[Seg], values: &Values<'_>, out: &mut String) {
    for seg in segs {
        match seg {
            Seg::Lit(text) => out.push_str(text),
            Seg::Dyn(Dynamic::Status) => out.push_str(&values.status.to_string()),
            Seg::Dyn(Dynamic::RequestId) => out.push_str(&escape_html(values.request_id)),
            Seg::Dyn(Dynamic::RetryAfter) => {
                if let Some(s) = values.retry_after {
                    out.push_str(&s.to_string());
                }
            }
            Seg::Dyn(Dynamic::WaitMinutes) => push_number(
                out,
                values
                    .wait_seconds
                    .map(|s| u64::from(s.saturating_add(30) / 60)),
            ),
            Seg::Dyn(Dynamic::WaitSeconds) => {
                if let Some(s) = values.wait_seconds {
                    out.push_str(&s.to_string());
                }
            }
            Seg::Dyn(Dynamic::Link) => {
                if let Some(link) = values.link {
                    out.push_str(&escape_html(link));
                }
            }
            Seg::Dyn(Dynamic::Notice) => {
                if let Some(notice) = values.notice {
                    out.push_str(&escape_html(notice));
                }
            }
            Seg::Dyn(Dynamic::Position) => push_number(out, values.position),
            Seg::Dyn(Dynamic::Ahead) => push_number(out, values.ahead),
            Seg::Dyn(Dynamic::OpensIn) => push_number(out, values.opens_in.map(u64::from)),
            Seg::Block(block, content) => {
                let shown = match block {
                    Block::Retry => values.retry_after.is_some(),
                    Block::Wait => values.wait_seconds.is_some_and(|s| s < LONG_WAIT),
                    Block::WaitLong => values.wait_seconds.is_some_and(|s| s >= LONG_WAIT),
                    Block::Link => values.link.is_some(),
                    Block::Notice => values.notice.is_some(),
                    Block::Position => values.position.is_some(),
                    Block::Opens => values.opens_in.is_some(),
                };
                if shown {
                    render(content, values, out);
                }
            }
        }
    }
}

fn push_number(out: &mut String, value: Option<u64>) {
    if let Some(n) = value {
        out.push_str(&n.to_string());
    }
}

/// Escapes text for HTML element content and quoted attribute values.
pub(crate) fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(source: &str) -> Vec<String> {
        parse(source, Scope::Template).expect_err("should fail")
    }

    #[test]
    fn parses_placeholders_and_nested_blocks() {
        let tokens = parse(
            "<p>{{ title }}</p>{{#retry}}in {{retry_after}}{{#wait}}{{wait_seconds}}{{/wait}}{{/retry}}!",
            Scope::Template,
        )
        .expect("valid");
        assert_eq!(
            tokens,
            vec![
                Token::Text("<p>".into()),
                Token::Field(Field::Kind(0)),
                Token::Text("</p>".into()),
                Token::Block(
                    Block::Retry,
                    vec![
                        Token::Text("in ".into()),
                        Token::Field(Field::Dyn(Dynamic::RetryAfter)),
                        Token::Block(
                            Block::Wait,
                            vec![Token::Field(Field::Dyn(Dynamic::WaitSeconds))]
                        ),
                    ]
                ),
                Token::Text("!".into()),
            ]
        );
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let found = problems("{{titel}}\n{{/retry}}\n{{#retry}}\n{{#nope}}{{/wait}}\n{{lang");
        assert_eq!(found.len(), 6, "{found:#?}");
        assert!(found[0].starts_with("line 1: unknown placeholder {{titel}}"));
        assert!(found[0].contains("{{title}}"), "lists the known ones");
        assert!(found[1].starts_with("line 2: {{/retry}} closes no block"));
        assert!(found[2].starts_with("line 4: unknown block {{#nope}}"));
        assert!(
            found[3].starts_with("line 4: {{/wait}} does not close {{#retry}} opened on line 3")
        );
        assert!(found[4].starts_with("line 5: \"{{\" is never closed"));
        assert!(found[5].starts_with("line 3: {{#retry}} is never closed"));
    }

    #[test]
    fn ui_strings_take_only_per_response_values() {
        assert!(parse("in {{retry_after}} s", Scope::Ui).is_ok());
        let found = parse("{{title}} {{#retry}}", Scope::Ui).expect_err("should fail");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found[0].contains("{{title}} cannot be used here"));
        assert!(found[1].contains("belong in the HTML templates"));
    }

    #[test]
    fn binding_escapes_texts_but_not_template_html() {
        let template = parse("<b>{{title}}</b>{{retry_hint}}", Scope::Template).expect("valid");
        let ui: Vec<Vec<Token>> = UI_FIELDS
            .iter()
            .map(|_| parse("<wait> {{retry_after}}", Scope::Ui).expect("valid"))
            .collect();
        let segs = bind(
            &template,
            &Binding {
                lang: "en",
                code: "shed",
                kind: ["a & b", "", ""],
                ui: &ui,
            },
        );
        let mut out = String::new();
        let values = Values {
            status: 503,
            request_id: "x",
            retry_after: Some(7),
            wait_seconds: None,
            link: None,
            notice: None,
            position: None,
            ahead: None,
            opens_in: None,
        };
        render(&segs, &values, &mut out);
        assert_eq!(out, "<b>a &amp; b</b>&lt;wait&gt; 7");
    }

    #[test]
    fn escapes_all_html_specials() {
        assert_eq!(
            escape_html(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }
}
