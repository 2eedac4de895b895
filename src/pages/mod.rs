//! Loading and checking the page set: the two HTML templates and one TOML file
//! per language (layout: `conf/pages/README.md`). Everything is parsed, checked
//! and bound here, once; a response only fills in the per-response values
//! (`respond` does, with [`template::render`] in the language
//! [`negotiate`] picks). A leaf: the config holds the loaded pages.

pub(crate) mod negotiate;
pub(crate) mod template;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::outcome::PAGE_KINDS;
use template::{Binding, Scope, Seg, Token, KIND_FIELDS, UI_FIELDS};

const PAGE_HTML: &str = include_str!("../../conf/pages/page.html");
const WAITING_HTML: &str = include_str!("../../conf/pages/waiting.html");
const BUILTIN_LANGUAGES: [(&str, &str); 2] = [
    ("en", include_str!("../../conf/pages/en.toml")),
    ("zh-CN", include_str!("../../conf/pages/zh-CN.toml")),
];

/// The page kinds shown with `waiting.html`; every other kind uses `page.html`.
const WAITING_KINDS: [&str; 5] = [
    "queue_full",
    "queue_timeout",
    "shed",
    "waiting_room",
    "line_full",
];

/// The language used when the client asks for none that exists.
const DEFAULT_LANGUAGE: &str = "en";

/// Compiled pages: templates and every language, ready to render. Cheap to
/// clone (an `Arc` inside), so it can live in the config snapshot.
#[derive(Clone)]
pub struct Pages {
    inner: Arc<Inner>,
}

struct Inner {
    /// Sorted by tag.
    languages: Vec<Language>,
    /// Index into `languages`.
    default: usize,
}

/// One language, bound to the templates.
pub(super) struct Language {
    /// The tag, e.g. `zh-CN`: file name, `Content-Language` and `<html lang>`.
    pub(super) tag: String,
    /// In [`PAGE_KINDS`] order.
    kinds: Vec<KindPage>,
}

/// The texts and the bound HTML of one page kind in one language.
pub(super) struct KindPage {
    /// The page heading.
    pub(super) title: String,
    /// What happened.
    pub(super) message: String,
    /// What to do.
    pub(super) advice: String,
    /// The template with everything but the per-response values filled in.
    pub(super) html: Vec<Seg>,
}

impl Language {
    /// The page of a kind, by its index in [`PAGE_KINDS`].
    pub(super) fn kind(&self, index: usize) -> Option<&KindPage> {
        self.kinds.get(index)
    }
}

impl std::fmt::Debug for Pages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pages")
            .field("languages", &self.languages())
            .field("default", &self.default_language().tag)
            .finish()
    }
}

/// A template's source and the name its problems are reported under.
struct Source {
    name: String,
    text: String,
}

/// A language file, parsed and checked, not yet bound.
struct LanguageText {
    tag: String,
    /// `[ui]` strings in [`UI_FIELDS`] order.
    ui: Vec<Vec<Token>>,
    /// title, message, advice for each of [`PAGE_KINDS`].
    kinds: Vec<[String; 3]>,
}

impl Pages {
    /// The built-in pages (embedded copies of `conf/pages`).
    pub fn builtin() -> Pages {
        static BUILTIN: OnceLock<Pages> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                let languages = BUILTIN_LANGUAGES
                    .iter()
                    .map(|(tag, text)| {
                        (
                            tag.to_string(),
                            format!("built-in {tag}.toml"),
                            Ok(text.to_string()),
                        )
                    })
                    .collect();
                match compile(
                    "built-in pages",
                    builtin_source(PAGE_HTML, "page.html"),
                    builtin_source(WAITING_HTML, "waiting.html"),
                    languages,
                ) {
                    Ok(pages) => pages,
                    // The unit tests load the same files, so this cannot happen in a tested build.
                    Err(problems) => {
                        panic!("the built-in pages are broken:\n{}", problems.join("\n"))
                    }
                }
            })
            .clone()
    }

    /// Loads a pages directory (layout: `conf/pages/README.md`). Every problem
    /// is returned at once (missing or unreadable file, TOML error, a language
    /// lacking a kind or field, an unknown placeholder, an unbalanced block),
    /// each naming the file and what to fix. `page.html` and `waiting.html` may
    /// be left out (the built-in ones are used); the languages are the
    /// `*.toml` files present, at least one.
    pub fn load(dir: &Path) -> Result<Pages, Vec<String>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![format!(
                "{}: cannot read the pages directory: {e}",
                dir.display()
            )]
        })?;
        let mut problems = Vec::new();
        let mut language_files = Vec::new();
        for entry in entries {
            let path = match entry {
                Ok(entry) => entry.path(),
                Err(e) => {
                    problems.push(format!("{}: cannot list the directory: {e}", dir.display()));
                    continue;
                }
            };
            if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
                language_files.push(path);
            }
        }
        language_files.sort();

        let mut read_template = |file: &str, builtin: &str| -> Source {
            let path = dir.join(file);
            match std::fs::read_to_string(&path) {
                Ok(text) => Source {
                    name: path.display().to_string(),
                    text,
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => builtin_source(builtin, file),
                Err(e) => {
                    problems.push(format!("{}: cannot read: {e}", path.display()));
                    builtin_source(builtin, file)
                }
            }
        };
        let page = read_template("page.html", PAGE_HTML);
        let waiting = read_template("waiting.html", WAITING_HTML);

        let mut languages = Vec::new();
        for path in &language_files {
            let name = path.display().to_string();
            let tag = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"));
            languages.push((tag, name, text));
        }
        match compile(&dir.display().to_string(), page, waiting, languages) {
            Ok(pages) if problems.is_empty() => Ok(pages),
            Ok(_) => Err(problems),
            Err(more) => {
                problems.extend(more);
                Err(problems)
            }
        }
    }

    /// Languages available, e.g. `["en", "zh-CN"]`.
    pub fn languages(&self) -> Vec<String> {
        self.inner.languages.iter().map(|l| l.tag.clone()).collect()
    }

    /// The language for a request's `Accept-Language`.
    pub(super) fn language_for(&self, request: &http::HeaderMap) -> &Language {
        let tags = self.inner.languages.iter().map(|l| l.tag.as_str());
        negotiate::pick_language(request, tags)
            .and_then(|i| self.inner.languages.get(i))
            .unwrap_or_else(|| self.default_language())
    }

    fn default_language(&self) -> &Language {
        // `compile` never builds a set without languages and keeps `default` in range.
        &self.inner.languages[self.inner.default]
    }
}

fn builtin_source(text: &str, file: &str) -> Source {
    Source {
        name: format!("built-in {file}"),
        text: text.to_owned(),
    }
}

/// Checks and binds a whole set, named `set` in problems about the set as a
/// whole; `languages` are (tag, file name, text or why it could not be read).
fn compile(
    set: &str,
    page: Source,
    waiting: Source,
    languages: Vec<(String, String, Result<String, String>)>,
) -> Result<Pages, Vec<String>> {
    let mut problems = Vec::new();
    let mut parse_template = |source: &Source| match template::parse(&source.text, Scope::Template)
    {
        Ok(tokens) => tokens,
        Err(found) => {
            problems.extend(found.into_iter().map(|p| format!("{}: {p}", source.name)));
            Vec::new()
        }
    };
    let page_tokens = parse_template(&page);
    let waiting_tokens = parse_template(&waiting);

    let mut texts: Vec<LanguageText> = Vec::new();
    let no_language = languages.is_empty();
    for (tag, name, text) in languages {
        let text = match text {
            Ok(text) => text,
            Err(problem) => {
                problems.push(format!("{name}: {problem}"));
                continue;
            }
        };
        if let Err(problem) = check_tag(&tag) {
            problems.push(format!("{name}: {problem}"));
            continue;
        }
        if let Some(other) = texts.iter().find(|t| t.tag.eq_ignore_ascii_case(&tag)) {
            problems.push(format!(
                "{name}: language {tag} is already defined by {}.toml; keep one of the two files",
                other.tag
            ));
            continue;
        }
        match parse_language(&tag, &text) {
            Ok(parsed) => texts.push(parsed),
            Err(found) => problems.extend(found.into_iter().map(|p| format!("{name}: {p}"))),
        }
    }
    if no_language {
        problems.push(format!(
            "{set}: no language file; add at least one <language>.toml such as en.toml (see conf/pages/README.md)"
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    texts.sort_by(|a, b| a.tag.cmp(&b.tag));

    let languages: Vec<Language> = texts
        .iter()
        .map(|text| Language {
            tag: text.tag.clone(),
            kinds: PAGE_KINDS
                .iter()
                .zip(&text.kinds)
                .map(|(code, [title, message, advice])| {
                    let tokens = if WAITING_KINDS.contains(code) {
                        &waiting_tokens
                    } else {
                        &page_tokens
                    };
                    let html = template::bind(
                        tokens,
                        &Binding {
                            lang: &text.tag,
                            code,
                            kind: [title, message, advice],
                            ui: &text.ui,
                        },
                    );
                    KindPage {
                        title: title.clone(),
                        message: message.clone(),
                        advice: advice.clone(),
                        html,
                    }
                })
                .collect(),
        })
        .collect();
    let default = languages
        .iter()
        .position(|l| l.tag.eq_ignore_ascii_case(DEFAULT_LANGUAGE))
        .unwrap_or(0);
    Ok(Pages {
        inner: Arc::new(Inner { languages, default }),
    })
}

/// A language tag as a file name: subtags of letters and digits joined by `-`,
/// the first of 2 to 8 letters (`en`, `zh-CN`, `pt-BR`, `zh-Hant-TW`).
fn check_tag(tag: &str) -> Result<(), String> {
    let mut subtags = tag.split('-');
    let first_ok = subtags
        .next()
        .is_some_and(|s| (2..=8).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphabetic()));
    let rest_ok =
        subtags.all(|s| (1..=8).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric()));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "\"{tag}\" is not a language tag; name language files after the language, such as en.toml, zh-CN.toml or pt-BR.toml"
        ))
    }
}

/// Parses and checks one language file; problems are reported without the file name.
fn parse_language(tag: &str, text: &str) -> Result<LanguageText, Vec<String>> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        vec![format!(
            "not valid TOML: {}",
            e.to_string().trim_end().replace('\n', "\n    ")
        )]
    })?;
    let mut problems = Vec::new();
    let mut ui: Vec<Option<Vec<Token>>> = vec![None; UI_FIELDS.len()];
    let mut kinds: Vec<[Option<String>; 3]> = vec![[None, None, None]; PAGE_KINDS.len()];
    let mut seen_kinds = vec![false; PAGE_KINDS.len()];
    let mut seen_ui = false;
    for (key, value) in &table {
        if key == "ui" {
            seen_ui = true;
            let Some(fields) = value.as_table() else {
                problems.push("ui must be a table: write [ui] followed by its strings".to_owned());
                continue;
            };
            for (field, value) in fields {
                let Some(index) = UI_FIELDS.iter().position(|(n, _)| n == field) else {
                    problems.push(format!(
                        "[ui].{field} is not a ui string; the ui strings are {}",
                        names(&UI_FIELDS)
                    ));
                    continue;
                };
                let parsed = text_value(value)
                    .map_err(|problem| vec![format!("[ui].{field} {problem}")])
                    .and_then(|text| {
                        template::parse(text, Scope::Ui).map_err(|found| {
                            found
                                .into_iter()
                                .map(|p| {
                                    format!("[ui].{field}: {}", p.trim_start_matches("line 1: "))
                                })
                                .collect()
                        })
                    });
                match parsed {
                    Ok(tokens) => ui[index] = Some(tokens),
                    Err(found) => {
                        // Present but wrong: reported once, not also as missing.
                        ui[index] = Some(Vec::new());
                        problems.extend(found);
                    }
                }
            }
        } else if let Some(index) = PAGE_KINDS.iter().position(|k| k == key) {
            seen_kinds[index] = true;
            let Some(fields) = value.as_table() else {
                problems.push(format!(
                    "{key} must be a table: write [{key}] followed by title, message and advice"
                ));
                continue;
            };
            for (field, value) in fields {
                let Some(slot) = KIND_FIELDS.iter().position(|(n, _)| n == field) else {
                    problems.push(format!(
                        "[{key}].{field} is not a page text; each kind has {}",
                        names(&KIND_FIELDS)
                    ));
                    continue;
                };
                let checked = match text_value(value) {
                    Ok(text) if text.contains("{{") => Err(format!(
                        "[{key}].{field} must be plain text without {{{{placeholders}}}}: it is also sent in the JSON answer; numbers belong in the [ui] strings"
                    )),
                    Ok(text) => Ok(text.to_owned()),
                    Err(problem) => Err(format!("[{key}].{field} {problem}")),
                };
                match checked {
                    Ok(text) => kinds[index][slot] = Some(text),
                    Err(problem) => {
                        // Present but wrong: reported once, not also as missing.
                        kinds[index][slot] = Some(String::new());
                        problems.push(problem);
                    }
                }
            }
        } else if key == "client_gone" {
            problems.push(
                "[client_gone] has no page (the client left; nothing can be sent): remove it"
                    .to_owned(),
            );
        } else {
            problems.push(format!(
                "[{key}] is not a page kind; the kinds are {}",
                PAGE_KINDS.join(", ")
            ));
        }
    }

    if !seen_ui {
        problems.push(format!(
            "[ui] is missing; add [ui] with {}",
            names(&UI_FIELDS)
        ));
    } else {
        for ((field, meaning), value) in UI_FIELDS.iter().zip(&ui) {
            if value.is_none() {
                problems.push(format!(
                    "[ui].{field} is missing; add {field} = \"...\" ({meaning})"
                ));
            }
        }
    }
    for ((kind, seen), fields) in PAGE_KINDS.iter().zip(&seen_kinds).zip(&kinds) {
        if !seen {
            problems.push(format!(
                "[{kind}] is missing; add [{kind}] with title, message and advice"
            ));
            continue;
        }
        for ((field, meaning), value) in KIND_FIELDS.iter().zip(fields) {
            if value.is_none() {
                problems.push(format!(
                    "[{kind}].{field} is missing; add {field} = \"...\" ({meaning})"
                ));
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(LanguageText {
        tag: tag.to_owned(),
        ui: ui.into_iter().map(Option::unwrap_or_default).collect(),
        kinds: kinds
            .into_iter()
            .map(|fields| fields.map(Option::unwrap_or_default))
            .collect(),
    })
}

fn text_value(value: &toml::Value) -> Result<&str, &'static str> {
    match value.as_str() {
        Some(text) if !text.trim().is_empty() => Ok(text),
        Some(_) => Err("is empty; write the text the shopper should read"),
        None => Err("must be a string in double quotes"),
    }
}

fn names(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// A temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "ordergate-pages-{}-{}",
                std::process::id(),
                fastrand::u64(..)
            ));
            std::fs::create_dir_all(&path).expect("temp dir");
            TempDir(path)
        }

        fn write(&self, name: &str, text: &str) -> &TempDir {
            std::fs::write(self.0.join(name), text).expect("write");
            self
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/pages")
    }

    #[test]
    fn the_shipped_pages_load() {
        let pages = Pages::load(&shipped()).unwrap_or_else(|p| panic!("{}", p.join("\n")));
        assert_eq!(pages.languages(), ["en", "zh-CN"]);
        assert_eq!(Pages::builtin().languages(), ["en", "zh-CN"]);
        assert_eq!(
            format!("{pages:?}"),
            r#"Pages { languages: ["en", "zh-CN"], default: "en" }"#
        );
    }

    #[test]
    fn the_builtin_pages_are_the_shipped_files() {
        let dir = shipped();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).expect("read");
        assert_eq!(read("page.html"), PAGE_HTML);
        assert_eq!(read("waiting.html"), WAITING_HTML);
        for (tag, text) in BUILTIN_LANGUAGES {
            assert_eq!(read(&format!("{tag}.toml")), text);
        }
        let shipped: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .filter_map(|e| {
                let path = e.expect("entry").path();
                (path.extension()? == "toml")
                    .then(|| path.file_stem()?.to_str().map(str::to_owned))?
            })
            .collect();
        assert_eq!(
            shipped.len(),
            BUILTIN_LANGUAGES.len(),
            "embed every shipped language"
        );
    }

    #[test]
    fn every_language_file_covers_every_kind() {
        for (_, text) in BUILTIN_LANGUAGES {
            let table: toml::Table = text.parse().expect("toml");
            for kind in PAGE_KINDS.iter() {
                assert!(table.contains_key(*kind), "{kind}");
            }
            assert_eq!(
                table.len(),
                PAGE_KINDS.len() + 1,
                "kinds and [ui], nothing else"
            );
        }
    }

    #[test]
    fn a_partial_directory_uses_the_builtin_templates() {
        let dir = TempDir::new();
        dir.write("en.toml", BUILTIN_LANGUAGES[0].1);
        let pages = Pages::load(&dir.0).unwrap_or_else(|p| panic!("{}", p.join("\n")));
        assert_eq!(pages.languages(), ["en"]);
        let builtin = Pages::builtin();
        let en = |p: &Pages| {
            p.inner.languages[0]
                .kinds
                .iter()
                .map(|k| k.html.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(en(&pages), en(&builtin));

        // An own page.html replaces the built-in one; waiting.html stays built-in.
        dir.write(
            "page.html",
            "<h1>{{title}}</h1>{{#retry}}{{retry_after}}{{/retry}}",
        );
        let pages = Pages::load(&dir.0).unwrap_or_else(|p| panic!("{}", p.join("\n")));
        let no_route = PAGE_KINDS
            .iter()
            .position(|k| *k == "no_route")
            .expect("kind");
        let shed = PAGE_KINDS.iter().position(|k| *k == "shed").expect("kind");
        assert_eq!(
            pages.inner.languages[0].kinds[no_route].html,
            vec![
                Seg::Lit("<h1>Page not found</h1>".into()),
                Seg::Block(
                    template::Block::Retry,
                    vec![Seg::Dyn(template::Dynamic::RetryAfter)]
                )
            ]
        );
        assert_eq!(
            pages.inner.languages[0].kinds[shed].html,
            builtin.inner.languages[0].kinds[shed].html
        );
    }

    #[test]
    fn a_directory_without_english_defaults_to_its_first_language() {
        let dir = TempDir::new();
        dir.write("zh-CN.toml", BUILTIN_LANGUAGES[1].1);
        let pages = Pages::load(&dir.0).unwrap_or_else(|p| panic!("{}", p.join("\n")));
        assert_eq!(pages.languages(), ["zh-CN"]);
        assert_eq!(pages.language_for(&http::HeaderMap::new()).tag, "zh-CN");
    }

    #[test]
    fn a_broken_directory_reports_every_problem_with_its_file() {
        let dir = TempDir::new();
        let en = BUILTIN_LANGUAGES[0].1;
        // A kind lacking a field, a kind missing, a placeholder in plain text,
        // an unknown kind and an unknown ui string.
        let de = en
            .replace(
                "advice = \"Please check the address, or go back to the home page.\"\n",
                "",
            )
            .replace("[shed]", "[shedding]")
            .replace(
                "title = \"Too many requests\"",
                "title = \"Too many {{status}}\"",
            )
            .replace("\n[ui]\n", "\n[ui]\nfooter = \"x\"\n");
        assert_ne!(de, en);
        dir.write("de.toml", &de)
            .write("fr.toml", "[ui\nrequest_id_label = 1")
            .write("en_GB.toml", en)
            .write("page.html", "{{title}} {{tittle}} {{#retry}}")
            .write("waiting.html", "{{/wait}}")
            .write("README.md", "ignored");
        let problems = Pages::load(&dir.0).expect_err("broken");
        let path = |name: &str| dir.0.join(name).display().to_string();
        let expect = [
            (path("de.toml"), "[ui].footer is not a ui string"),
            (path("de.toml"), "[rate_limited].title must be plain text"),
            (path("de.toml"), "[shedding] is not a page kind"),
            (
                path("de.toml"),
                "[no_route].advice is missing; add advice = \"...\"",
            ),
            (path("de.toml"), "[shed] is missing"),
            (path("en_GB.toml"), "\"en_GB\" is not a language tag"),
            (path("fr.toml"), "not valid TOML"),
            (path("page.html"), "line 1: unknown placeholder {{tittle}}"),
            (path("page.html"), "line 1: {{#retry}} is never closed"),
            (path("waiting.html"), "line 1: {{/wait}} closes no block"),
        ];
        for (file, text) in &expect {
            assert!(
                problems
                    .iter()
                    .any(|p| p.starts_with(&format!("{file}: ")) && p.contains(text)),
                "no problem {file}: {text} in\n{}",
                problems.join("\n")
            );
        }
        assert_eq!(problems.len(), expect.len(), "{}", problems.join("\n"));
    }

    #[test]
    fn ui_strings_are_checked_too() {
        let dir = TempDir::new();
        let en = BUILTIN_LANGUAGES[0]
            .1
            .replace(
                "retry_hint = \"You can try again in {{retry_after}} s.\"",
                "retry_hint = \"{{title}} {{#retry}}\"",
            )
            .replace("refresh_now = \"Try again now\"\n", "")
            .replace(
                "request_id_label = \"Request id\"",
                "request_id_label = \"\"",
            );
        dir.write("en.toml", &en).write("xx.toml", "title = \"x\"");
        let problems = Pages::load(&dir.0).expect_err("broken");
        let text = problems.join("\n");
        assert!(
            text.contains("[ui].retry_hint: {{title}} cannot be used here"),
            "{text}"
        );
        assert!(
            text.contains("[ui].retry_hint: blocks such as {{#retry}}"),
            "{text}"
        );
        assert!(text.contains("[ui].refresh_now is missing"), "{text}");
        assert!(text.contains("[ui].request_id_label is empty"), "{text}");
        assert!(
            text.contains("xx.toml: [title] is not a page kind"),
            "{text}"
        );
        assert!(text.contains("xx.toml: [ui] is missing"), "{text}");
        assert!(text.contains("xx.toml: [no_route] is missing"), "{text}");
    }

    #[test]
    fn an_empty_or_missing_directory_is_an_error() {
        let dir = TempDir::new();
        dir.write("page.html", "{{title}}");
        let problems = Pages::load(&dir.0).expect_err("no language");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("no language file"), "{problems:?}");
        std::fs::write(dir.0.join("ja.toml"), [0xff, 0xfe]).expect("write");
        let problems = Pages::load(&dir.0).expect_err("unreadable");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with(&format!("{}: cannot read", dir.0.join("ja.toml").display())),
            "{problems:?}"
        );
        let problems = Pages::load(&dir.0.join("nope")).expect_err("missing");
        assert!(
            problems[0].contains("cannot read the pages directory"),
            "{problems:?}"
        );
    }
}
