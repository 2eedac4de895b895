//! The keys ordergate knows and the type of each, checked on the parsed TOML
//! tree before serde sees it. An unknown key or a value of the wrong type
//! becomes a problem with its key path, what was expected in the operator's
//! words and, for a near miss, the key that was probably meant; the key is
//! then dropped, so serde never stops at it and validation goes on to report
//! the rest of the file at once.
//!
//! This table must list every field of `file.rs` (a test deserializes a file
//! that sets each key listed here, and `deny_unknown_fields` there catches a
//! key listed here but unknown to serde), and `docs/configuration.md` must
//! document each key listed here, and no other (the `reference` tests below).

use std::borrow::Cow;
use std::fmt;

use toml::de::{DeTable, DeValue};

use super::ConfigError;

/// What a key holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Any string.
    Str,
    /// A duration string such as "5s".
    Duration,
    /// A whole number.
    Int,
    /// true or false.
    Bool,
    /// A size: a whole number of bytes, or a string such as "32KiB".
    Size,
    /// `queue.limit`: "capacity", "adaptive" or a whole number.
    Limit,
    /// A list of strings.
    Strs,
    /// A list of whole numbers.
    Ints,
    /// A table with these keys.
    Table(&'static str, &'static [Field]),
    /// A list of tables with these keys (`[[name]]` or `[ { ... } ]`).
    Tables(&'static str, &'static [Field]),
    /// A table of names to whole numbers.
    IntMap,
    /// A table of names to strings.
    StrMap,
    /// An RFC 3339 time: a TOML date-time or a string.
    Time,
    /// A number, whole or with a fraction (`0.01`, `1`).
    Number,
}

impl Kind {
    /// What is expected, in the operator's words.
    fn expected(self) -> String {
        match self {
            Kind::Str => "a string in quotes".to_string(),
            Kind::Duration => {
                "a duration in quotes with a unit, e.g. \"250ms\" or \"5s\"".to_string()
            }
            Kind::Int => "a whole number".to_string(),
            Kind::Bool => "true or false".to_string(),
            Kind::Size => {
                "a size: a whole number of bytes or a string such as \"32KiB\" or \"1MiB\""
                    .to_string()
            }
            Kind::Limit => "\"capacity\", \"adaptive\" or a whole number".to_string(),
            Kind::Strs => "a list of strings, e.g. [\"a\", \"b\"]".to_string(),
            Kind::Ints => "a list of whole numbers, e.g. [200, 204]".to_string(),
            Kind::Table(name, _) => format!("a table ([{name}] or {{ key = value, ... }})"),
            Kind::Tables(name, _) => {
                format!("a list of tables: write [[{name}]] before each entry")
            }
            Kind::IntMap => "a table of whole numbers, e.g. { critical = 50 }".to_string(),
            Kind::StrMap => "a table of strings, e.g. { \"x-shop\" = \"cn\" }".to_string(),
            Kind::Time => "an RFC 3339 time, e.g. \"2026-12-01T02:00:00Z\"".to_string(),
            Kind::Number => "a number, e.g. 0.01 or 1".to_string(),
        }
    }

    fn accepts(self, value: &DeValue<'_>) -> bool {
        let all = |items: &[toml::Spanned<DeValue<'_>>], is: fn(&DeValue<'_>) -> bool| {
            items.iter().all(|item| is(item.get_ref()))
        };
        let values = |map: &DeTable<'_>, is: fn(&DeValue<'_>) -> bool| {
            map.values().all(|value| is(value.get_ref()))
        };
        match (self, value) {
            (Kind::Str | Kind::Duration, DeValue::String(_)) => true,
            (Kind::Int, DeValue::Integer(_)) => true,
            (Kind::Bool, DeValue::Boolean(_)) => true,
            (Kind::Size | Kind::Limit, DeValue::Integer(_) | DeValue::String(_)) => true,
            (Kind::Strs, DeValue::Array(items)) => all(items, |v| v.is_str()),
            (Kind::Ints, DeValue::Array(items)) => all(items, |v| v.is_integer()),
            (Kind::Table(..), DeValue::Table(_)) => true,
            (Kind::Tables(..), DeValue::Array(items)) => all(items, |v| v.is_table()),
            (Kind::IntMap, DeValue::Table(map)) => values(map, |v| v.is_integer()),
            (Kind::StrMap, DeValue::Table(map)) => values(map, |v| v.is_str()),
            (Kind::Time, DeValue::String(_) | DeValue::Datetime(_)) => true,
            (Kind::Number, DeValue::Integer(_) | DeValue::Float(_)) => true,
            _ => false,
        }
    }
}

/// A known key.
#[derive(Debug)]
struct Field {
    name: &'static str,
    kind: Kind,
}

const fn f(name: &'static str, kind: Kind) -> Field {
    Field { name, kind }
}

const TLS_CERTIFICATE: &[Field] = &[f("cert", Kind::Str), f("key", Kind::Str)];

const TLS: &[Field] = &[
    f("listen", Kind::Str),
    f("cert", Kind::Str),
    f("key", Kind::Str),
    f(
        "certificates",
        Kind::Tables("server.tls.certificates", TLS_CERTIFICATE),
    ),
    f("strict_sni", Kind::Bool),
    f("http2", Kind::Bool),
    f("proxy_protocol", Kind::Str),
];

const HSTS: &[Field] = &[
    f("max_age", Kind::Duration),
    f("include_subdomains", Kind::Bool),
    f("preload", Kind::Bool),
];

const HEADER_RULES: &[Field] = &[f("set", Kind::StrMap), f("remove", Kind::Strs)];

const SERVER: &[Field] = &[
    f("listen", Kind::Strs),
    f("threads", Kind::Int),
    f("grace_period", Kind::Duration),
    f("shutdown_delay", Kind::Duration),
    f("upstream_keepalive", Kind::Int),
    f("pages", Kind::Str),
    f("tls", Kind::Tables("server.tls", TLS)),
    f("max_request_header_bytes", Kind::Size),
    f("header_timeout", Kind::Duration),
    f("keepalive_timeout", Kind::Duration),
    f("read_buffer", Kind::Size),
    f("merge_slashes", Kind::Bool),
    f("escaped_slashes", Kind::Str),
    f("https_redirect", Kind::Bool),
    f("https_port", Kind::Int),
    f("hsts", Kind::Table("server.hsts", HSTS)),
    f("trusted_proxies", Kind::Strs),
    f("client_ip_header", Kind::Str),
    f("proxy_protocol", Kind::Str),
];

const BACKEND: &[Field] = &[
    f("addr", Kind::Str),
    f("srv", Kind::Str),
    f("weight", Kind::Int),
    f("max_in_flight", Kind::Int),
];

const HEALTH: &[Field] = &[
    f("kind", Kind::Str),
    f("path", Kind::Str),
    f("method", Kind::Str),
    f("host", Kind::Str),
    f("expect_status", Kind::Ints),
    f("interval", Kind::Duration),
    f("timeout", Kind::Duration),
    f("jitter", Kind::Duration),
    f("healthy_threshold", Kind::Int),
    f("unhealthy_threshold", Kind::Int),
    f("start_healthy", Kind::Bool),
];

const OUTLIER: &[Field] = &[
    f("consecutive_gateway_failures", Kind::Int),
    f("consecutive_5xx", Kind::Int),
    f("base_ejection", Kind::Duration),
    f("max_ejection", Kind::Duration),
    f("max_ejected_percent", Kind::Int),
];

const RETRY_BUDGET: &[Field] = &[f("percent", Kind::Int), f("min_per_second", Kind::Int)];

const QUEUE: &[Field] = &[
    f("max_waiting", Kind::Int),
    f("timeout", Kind::Duration),
    f("limit", Kind::Limit),
    f("adaptive_min", Kind::Int),
    f("adaptive_max", Kind::Int),
    f("reserved", Kind::IntMap),
];

const UPSTREAM_TLS: &[Field] = &[
    f("sni", Kind::Str),
    f("ca_file", Kind::Str),
    f("verify", Kind::Bool),
    f("client_cert", Kind::Str),
    f("client_key", Kind::Str),
];

const POOL: &[Field] = &[
    f("name", Kind::Str),
    f("balance", Kind::Str),
    f("hash_key", Kind::Str),
    f("connect_timeout", Kind::Duration),
    f("request_timeout", Kind::Duration),
    f("idle_timeout", Kind::Duration),
    f("backends", Kind::Tables("pools.backends", BACKEND)),
    f("health", Kind::Table("pools.health", HEALTH)),
    f("outlier", Kind::Table("pools.outlier", OUTLIER)),
    f("panic_threshold", Kind::Int),
    f("slow_start", Kind::Duration),
    f(
        "retry_budget",
        Kind::Table("pools.retry_budget", RETRY_BUDGET),
    ),
    f("max_in_flight", Kind::Int),
    f("queue", Kind::Table("pools.queue", QUEUE)),
    f("backup", Kind::Str),
    f("failback_after", Kind::Duration),
    f("tls", Kind::Table("pools.tls", UPSTREAM_TLS)),
];

const RETRY: &[Field] = &[
    f("attempts", Kind::Int),
    f("on", Kind::Strs),
    f("per_try_timeout", Kind::Duration),
    f("backoff_base", Kind::Duration),
    f("backoff_max", Kind::Duration),
    f("idempotency_key_header", Kind::Str),
    f("retry_with_idempotency_key", Kind::Bool),
    f("unsafe_methods", Kind::Strs),
];

const RATE_LIMIT: &[Field] = &[
    f("requests_per_second", Kind::Int),
    f("key", Kind::Str),
    f("burst", Kind::Int),
    f("max_clients", Kind::Int),
];

const IDEMPOTENCY: &[Field] = &[
    f("header", Kind::Str),
    f("methods", Kind::Strs),
    f("required", Kind::Bool),
    f("ttl", Kind::Duration),
    f("scope", Kind::Str),
    f("per_shopper_headers", Kind::Strs),
    f("backend_dedupes", Kind::Bool),
    f("max_bytes", Kind::Size),
    f("max_response_bytes", Kind::Size),
    f("wait_for_first", Kind::Duration),
    f("orders_url", Kind::Str),
];

const MAINTENANCE: &[Field] = &[
    f("active", Kind::Bool),
    f("until", Kind::Str),
    f("message", Kind::Str),
    f("allow_cidrs", Kind::Strs),
    f("allow_header", Kind::Str),
    f("allow_token", Kind::Str),
    f("allow_token_env", Kind::Str),
];

const STALE: &[Field] = &[
    f("max_age", Kind::Duration),
    f("max_bytes", Kind::Size),
    f("statuses", Kind::Ints),
    f("when", Kind::Strs),
    f("private_ok", Kind::Bool),
    f("ignore_cookies", Kind::Strs),
];

const ROUTE: &[Field] = &[
    f("name", Kind::Str),
    f("host", Kind::Str),
    f("path_prefix", Kind::Str),
    f("methods", Kind::Strs),
    f("pool", Kind::Str),
    f("timeout", Kind::Duration),
    f("retry", Kind::Table("routes.retry", RETRY)),
    f("priority", Kind::Str),
    f("intercept_errors", Kind::Bool),
    f("pages", Kind::Str),
    f("rate_limit", Kind::Table("routes.rate_limit", RATE_LIMIT)),
    f("max_body_bytes", Kind::Size),
    f(
        "idempotency",
        Kind::Table("routes.idempotency", IDEMPOTENCY),
    ),
    f(
        "maintenance",
        Kind::Table("routes.maintenance", MAINTENANCE),
    ),
    f("stale", Kind::Table("routes.stale", STALE)),
    f("stream_idle_timeout", Kind::Duration),
    f("long_poll", Kind::Bool),
    f("https_redirect", Kind::Bool),
    f("strip_prefix", Kind::Bool),
    f(
        "request_headers",
        Kind::Table("routes.request_headers", HEADER_RULES),
    ),
    f(
        "response_headers",
        Kind::Table("routes.response_headers", HEADER_RULES),
    ),
];

const ADMIN: &[Field] = &[
    f("listen", Kind::Str),
    f("token", Kind::Str),
    f("token_env", Kind::Str),
    f("hosts", Kind::Strs),
    f("max_connections", Kind::Int),
    f("header_timeout", Kind::Duration),
];

const LOG: &[Field] = &[f("access", Kind::Str)];

const BYPASS: &[Field] = &[
    f("paths", Kind::Strs),
    f("methods", Kind::Strs),
    f("header", Kind::Str),
    f("header_value", Kind::Str),
];

const ROOM: &[Field] = &[
    f("name", Kind::Str),
    f("routes", Kind::Strs),
    f("max_active", Kind::Int),
    f("admit_per_minute", Kind::Int),
    f("session", Kind::Duration),
    f("max_session", Kind::Duration),
    f("max_waiting", Kind::Int),
    f("ticket_rate_per_address", Kind::Int),
    f("refresh", Kind::Duration),
    f("ticket_timeout", Kind::Duration),
    f("secret", Kind::Str),
    f("secret_env", Kind::Str),
    f("mode", Kind::Str),
    f("bypass", Kind::Table("rooms.bypass", BYPASS)),
    f("opens_at", Kind::Time),
];

const STORE: &[Field] = &[
    f("kind", Kind::Str),
    f("url", Kind::Str),
    f("password_env", Kind::Str),
    f("key_prefix", Kind::Str),
    f("timeout", Kind::Duration),
    f("pool_size", Kind::Int),
];

const DNS: &[Field] = &[
    f("servers", Kind::Strs),
    f("min_ttl", Kind::Duration),
    f("max_ttl", Kind::Duration),
    f("timeout", Kind::Duration),
];

const TRACING: &[Field] = &[
    f("otlp", Kind::Str),
    f("ratio", Kind::Number),
    f("client_sampled", Kind::Bool),
    f("service_name", Kind::Str),
    f("timeout", Kind::Duration),
    f("interval", Kind::Duration),
];

const ROOT: &[Field] = &[
    f("server", Kind::Table("server", SERVER)),
    f("pools", Kind::Tables("pools", POOL)),
    f("routes", Kind::Tables("routes", ROUTE)),
    f("rooms", Kind::Tables("rooms", ROOM)),
    f("admin", Kind::Table("admin", ADMIN)),
    f("log", Kind::Table("log", LOG)),
    f("maintenance", Kind::Table("maintenance", MAINTENANCE)),
    f("store", Kind::Table("store", STORE)),
    f("dns", Kind::Table("dns", DNS)),
    f("tracing", Kind::Table("tracing", TRACING)),
];

/// The key path of an entry of `pools` or `routes`: `pools[0] "orders"`, or
/// `pools[0]` while it has no name. Validation names entries the same way.
/// Written out only when a problem is reported.
pub(super) fn entry_path<'a>(list: &'a str, index: usize, name: &'a str) -> EntryPath<'a> {
    EntryPath { list, index, name }
}

/// See [`entry_path`].
#[derive(Clone, Copy)]
pub(super) struct EntryPath<'a> {
    list: &'a str,
    index: usize,
    name: &'a str,
}

impl fmt::Display for EntryPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let EntryPath { list, index, name } = self;
        if name.is_empty() {
            write!(f, "{list}[{index}]")
        } else {
            write!(f, "{list}[{index}] {name:?}")
        }
    }
}

/// Checks `root` against the known keys; reports and removes every unknown key
/// and every value of the wrong type. Works on the parser's borrowed tree, and
/// writes a key's path only for a problem: a file of 10 000 routes is checked
/// without an allocation per key.
pub(super) fn check(root: &mut DeTable<'_>) -> Vec<ConfigError> {
    let mut problems = Vec::new();
    walk(root, ROOT, Where::Top, TableName::Top, &mut problems);
    problems
}

/// Where a key is, as the problems name it: `server.tls[0].cert`,
/// `routes[3] "checkout".retry.attempts`.
#[derive(Clone, Copy)]
enum Where<'a> {
    Top,
    /// `key` of the table at the parent.
    Key(&'a Where<'a>, &'a str),
    /// Entry `index` of a list of tables; at the top level with the entry's
    /// name, as validation names it (see [`entry_path`]).
    Entry(&'a Where<'a>, usize, &'a str),
}

impl fmt::Display for Where<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Where::Top => Ok(()),
            Where::Key(Where::Top, key) => f.write_str(key),
            Where::Key(parent, key) => write!(f, "{parent}.{key}"),
            Where::Entry(Where::Key(Where::Top, list), index, name) => {
                entry_path(list, index, name).fmt(f)
            }
            Where::Entry(parent, index, _) => write!(f, "{parent}[{index}]"),
        }
    }
}

/// A table as the problems name it: `the top level`, `[server]`, `[[routes]]`.
#[derive(Clone, Copy)]
enum TableName {
    Top,
    Table(&'static str),
    Tables(&'static str),
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableName::Top => f.write_str("the top level"),
            TableName::Table(name) => write!(f, "[{name}]"),
            TableName::Tables(name) => write!(f, "[[{name}]]"),
        }
    }
}

fn walk(
    table: &mut DeTable<'_>,
    fields: &'static [Field],
    at: Where<'_>,
    table_name: TableName,
    problems: &mut Vec<ConfigError>,
) {
    // Problems come in the schema's order of keys (then unknown keys), as a
    // reader of the docs expects; each key's problems are kept with the
    // key's place, and sorted only when there are any.
    let mut found: Vec<(usize, Vec<ConfigError>)> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    for (key, value) in table.iter_mut() {
        let key: &str = key.get_ref();
        let before = problems.len();
        let here = Where::Key(&at, key);
        let place = fields.iter().position(|f| f.name == key);
        match place.map(|i| &fields[i]) {
            None => {
                problems.push(ConfigError {
                    path: here.to_string(),
                    message: unknown_key(key, fields, table_name),
                });
                dropped.push(key.to_owned());
            }
            Some(field) if !field.kind.accepts(value.get_ref()) => {
                problems.push(ConfigError {
                    path: here.to_string(),
                    message: wrong_type(field.kind, value.get_ref()),
                });
                dropped.push(key.to_owned());
            }
            Some(field) => match (field.kind, value.get_mut()) {
                (Kind::Table(name, inner), DeValue::Table(nested)) => {
                    walk(nested, inner, here, TableName::Table(name), problems);
                }
                (Kind::Tables(name, inner), DeValue::Array(items)) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        if let DeValue::Table(entry) = item.get_mut() {
                            let label = match entry.get("name").map(|v| v.get_ref()) {
                                Some(DeValue::String(name)) => name.clone(),
                                _ => Cow::Borrowed(""),
                            };
                            let entry_at = Where::Entry(&here, i, &label);
                            walk(entry, inner, entry_at, TableName::Tables(name), problems);
                        }
                    }
                }
                _ => {}
            },
        }
        if problems.len() > before {
            found.push((place.unwrap_or(usize::MAX), problems.split_off(before)));
        }
    }
    for key in &dropped {
        table.remove(key.as_str());
    }
    found.sort_by_key(|(place, _)| *place);
    problems.extend(found.into_iter().flat_map(|(_, these)| these));
}

fn unknown_key(key: &str, fields: &[Field], table_name: TableName) -> String {
    let names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    match closest(key, &names) {
        Some(near) => format!("unknown key; did you mean `{near}`?"),
        None => format!("unknown key; {table_name} takes: {}", names.join(", ")),
    }
}

/// The known name nearest to a misspelt one, when it is near enough to be a
/// typo (at most a third of the letters differ, at least one allowed).
fn closest<'a>(key: &str, names: &[&'a str]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    names
        .iter()
        .map(|name| (edit_distance(&key, name), *name))
        .filter(|(distance, name)| *distance <= (name.len() / 3).max(1))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, name)| name)
}

/// Levenshtein distance, counting an adjacent swap as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut rows = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in rows.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in rows[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (rows[i - 1][j] + 1)
                .min(rows[i][j - 1] + 1)
                .min(rows[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(rows[i - 2][j - 2] + 1);
            }
            rows[i][j] = best;
        }
    }
    rows[a.len()][b.len()]
}

fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(s) => format!("the string {s:?}"),
        DeValue::Integer(n) => format!("the number {n}"),
        DeValue::Float(x) => format!("the number {x}"),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => format!("the date {d}"),
        DeValue::Array(items) => match items
            .iter()
            .map(|item| item.get_ref())
            .find(|item| !item.is_str() && !item.is_integer())
        {
            Some(odd) => format!("a list holding {}", describe(odd)),
            None => "a list".to_string(),
        },
        DeValue::Table(_) => "a table".to_string(),
    }
}

fn wrong_type(kind: Kind, value: &DeValue<'_>) -> String {
    match (kind, value) {
        (Kind::Tables(name, _), DeValue::Table(_)) => format!(
            "[{name}] makes a single table, but {name} is a list: write [[{name}]] (double brackets) before each entry"
        ),
        (Kind::Int, DeValue::String(s)) if s.trim().parse::<i64>().is_ok() => format!(
            "expected a whole number, found the string {s:?}; write it without quotes: {}",
            s.trim()
        ),
        (Kind::Bool, DeValue::String(s)) if matches!(s.as_ref(), "true" | "false") => {
            format!("expected true or false, found the string {s:?}; write it without quotes")
        }
        (Kind::Duration, DeValue::Integer(n)) => format!(
            "expected {}, found the number {n}; write e.g. \"{n}s\" or \"{n}ms\"",
            kind.expected()
        ),
        (Kind::Strs, DeValue::String(s)) => format!(
            "expected {}, found the string {s:?}; write [{s:?}]",
            kind.expected()
        ),
        _ => format!("expected {}, found {}", kind.expected(), describe(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::{Table, Value};

    fn problems(text: &str) -> Vec<String> {
        let mut table = DeTable::parse(text).expect("TOML");
        check(table.get_mut())
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn near_misses_get_a_suggestion_and_others_the_list() {
        let found = problems("[server]\nthreds = 4\nfrobnicate = 1\n");
        assert_eq!(
            found,
            [
                "server.frobnicate: unknown key; [server] takes: listen, threads, grace_period, shutdown_delay, upstream_keepalive, pages, tls, max_request_header_bytes, header_timeout, keepalive_timeout, read_buffer, merge_slashes, escaped_slashes, https_redirect, https_port, hsts, trusted_proxies, client_ip_header, proxy_protocol",
                "server.threds: unknown key; did you mean `threads`?",
            ]
        );
        assert_eq!(closest("balnce", &["balance", "backends"]), Some("balance"));
        assert_eq!(closest("x", &["balance"]), None);
    }

    #[test]
    fn wrong_types_say_what_was_expected_and_paths_name_the_entry() {
        let found = problems(
            "[server]\nthreads = \"4\"\n[pools]\nname = \"p\"\n[[routes]]\nname = \"r\"\ntimeout = 5\nmethods = \"GET\"\n[routes.retry]\nattempts = 2.5\n",
        );
        let expected = [
            "server.threads: expected a whole number, found the string \"4\"; write it without quotes: 4",
            "pools: [pools] makes a single table, but pools is a list: write [[pools]] (double brackets) before each entry",
            "routes[0] \"r\".methods: expected a list of strings, e.g. [\"a\", \"b\"], found the string \"GET\"; write [\"GET\"]",
            "routes[0] \"r\".timeout: expected a duration in quotes with a unit, e.g. \"250ms\" or \"5s\", found the number 5; write e.g. \"5s\" or \"5ms\"",
            "routes[0] \"r\".retry.attempts: expected a whole number, found the number 2.5",
        ];
        assert_eq!(found, expected);
    }

    /// A value of the right type for every kind.
    fn sample(kind: Kind) -> Value {
        match kind {
            Kind::Str => Value::String("x".to_string()),
            Kind::Duration => Value::String("1s".to_string()),
            Kind::Int | Kind::Size | Kind::Limit => Value::Integer(1),
            Kind::Bool => Value::Boolean(true),
            Kind::Strs => Value::Array(vec![Value::String("x".to_string())]),
            Kind::Ints => Value::Array(vec![Value::Integer(1)]),
            Kind::Table(_, fields) => Value::Table(sample_table(fields)),
            Kind::Tables(_, fields) => Value::Array(vec![Value::Table(sample_table(fields))]),
            Kind::IntMap => Value::Table(Table::from_iter([("a".to_string(), Value::Integer(1))])),
            Kind::StrMap => Value::Table(Table::from_iter([(
                "x-a".to_string(),
                Value::String("x".to_string()),
            )])),
            Kind::Time => Value::String("2026-12-01T02:00:00Z".to_string()),
            Kind::Number => Value::Float(0.5),
        }
    }

    fn sample_table(fields: &[Field]) -> Table {
        fields
            .iter()
            .map(|f| (f.name.to_string(), sample(f.kind)))
            .collect()
    }

    /// Every table of the tree, as the key path that leads to it.
    fn tables(
        fields: &'static [Field],
        path: Vec<&'static str>,
        out: &mut Vec<(Vec<&'static str>, &'static [Field])>,
    ) {
        out.push((path.clone(), fields));
        for field in fields {
            if let Kind::Table(_, inner) | Kind::Tables(_, inner) = field.kind {
                let mut deeper = path.clone();
                deeper.push(field.name);
                tables(inner, deeper, out);
            }
        }
    }

    fn table_at<'a>(root: &'a mut Table, path: &[&str]) -> &'a mut Table {
        let mut table = root;
        for key in path {
            table = match table.get_mut(*key) {
                Some(Value::Table(t)) => t,
                Some(Value::Array(items)) => match items.first_mut() {
                    Some(Value::Table(t)) => t,
                    _ => panic!("{key} holds no table"),
                },
                _ => panic!("no {key}"),
            };
        }
        table
    }

    #[test]
    fn the_schema_lists_exactly_the_keys_serde_knows() {
        let full = sample_table(ROOT);
        let parsed: Result<super::super::FileConfig, _> = Value::Table(full.clone()).try_into();
        assert!(
            parsed.is_ok(),
            "a key of the schema is unknown to file.rs: {parsed:?}"
        );
        let mut all = Vec::new();
        tables(ROOT, Vec::new(), &mut all);
        for (path, fields) in all {
            let mut probe = full.clone();
            table_at(&mut probe, &path).insert("zzz_probe".to_string(), Value::Integer(1));
            let error = Value::Table(probe)
                .try_into::<super::super::FileConfig>()
                .expect_err("an unknown key is refused")
                .to_string();
            let expected = error
                .split("expected")
                .nth(1)
                .unwrap_or_else(|| panic!("{error}"));
            let mut serde_keys: Vec<&str> = expected
                .lines()
                .next()
                .unwrap_or_default()
                .split('`')
                .skip(1)
                .step_by(2)
                .collect();
            let mut schema_keys: Vec<&str> = fields.iter().map(|f| f.name).collect();
            serde_keys.sort_unstable();
            schema_keys.sort_unstable();
            assert_eq!(schema_keys, serde_keys, "keys of {path:?}");
        }
    }
}

/// The configuration reference, `docs/configuration.md`, against this table.
///
/// The reference writes each table in a heading, as a code span in TOML's own
/// form: `` ## `[server]` ``, `` ### `[[pools.backends]]` ``. It writes each key
/// once, as its full dotted path in a code span filling the first cell of a
/// table row, under the heading of its table: `` | `pools.health.interval` | ``.
/// Lists of tables lose their brackets in key paths
/// (`routes.idempotency.scope`, `server.tls.cert`). Any table row whose first
/// cell is one code span of lower-case letters, digits, `_` and `.` is read as
/// a key, so other tables in the reference start with plain words.
#[cfg(test)]
mod reference {
    use std::collections::BTreeSet;

    use super::{Field, Kind, ROOT};

    const REFERENCE: &str = include_str!("../../docs/configuration.md");
    const AT: &str = "docs/configuration.md";

    /// Every key and every table of the schema, as the reference writes them.
    fn walk(fields: &[Field], parent: &str, keys: &mut Vec<String>, tables: &mut Vec<String>) {
        for field in fields {
            let path = if parent.is_empty() {
                field.name.to_string()
            } else {
                format!("{parent}.{}", field.name)
            };
            match field.kind {
                Kind::Table(_, inner) => {
                    tables.push(format!("[{path}]"));
                    walk(inner, &path, keys, tables);
                }
                Kind::Tables(_, inner) => {
                    tables.push(format!("[[{path}]]"));
                    walk(inner, &path, keys, tables);
                }
                _ => keys.push(path),
            }
        }
    }

    /// The text of `cell` when it is exactly one code span.
    fn code_span(cell: &str) -> Option<&str> {
        let inner = cell.trim().strip_prefix('`')?.strip_suffix('`')?;
        (!inner.is_empty() && !inner.contains('`')).then_some(inner)
    }

    /// What the reference documents: keys with the table heading they stand
    /// under (line numbers for the messages), and table headings.
    struct Documented {
        keys: Vec<(usize, String, Option<String>)>,
        tables: Vec<(usize, String)>,
    }

    fn read(text: &str) -> Documented {
        let mut found = Documented {
            keys: Vec::new(),
            tables: Vec::new(),
        };
        let mut current: Option<String> = None;
        let mut in_code_block = false;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.starts_with("```") {
                in_code_block = !in_code_block;
                continue;
            }
            if in_code_block {
                continue;
            }
            if line.starts_with('#') {
                let heading = line.trim_start_matches('#');
                current = code_span(heading)
                    .filter(|span| span.starts_with('['))
                    .map(str::to_string);
                if let Some(table) = &current {
                    found.tables.push((i + 1, table.clone()));
                }
                continue;
            }
            let Some(first) = line
                .strip_prefix('|')
                .and_then(|rest| rest.split('|').next())
            else {
                continue;
            };
            let Some(key) = code_span(first) else {
                continue;
            };
            let key_like = key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.');
            if key_like {
                let table = current
                    .as_deref()
                    .map(|t| t.trim_matches(['[', ']']).to_string());
                found.keys.push((i + 1, key.to_string(), table));
            }
        }
        found
    }

    /// What is wrong with `text` as the reference of `fields`; empty when
    /// nothing is.
    fn problems(fields: &[Field], text: &str) -> Vec<String> {
        let (mut keys, mut tables) = (Vec::new(), Vec::new());
        walk(fields, "", &mut keys, &mut tables);
        let documented = read(text);
        let mut problems = Vec::new();

        let known: BTreeSet<&str> = keys.iter().map(String::as_str).collect();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for (line, key, table) in &documented.keys {
            if !known.contains(key.as_str()) {
                problems.push(format!(
                    "{AT}:{line}: `{key}` is not a key of the schema (src/config/schema.rs); fix its path or remove the row"
                ));
                continue;
            }
            if !seen.insert(key) {
                problems.push(format!(
                    "{AT}:{line}: `{key}` is documented twice; keep one row"
                ));
            }
            let parent = key.rsplit_once('.').map_or("", |(parent, _)| parent);
            if table.as_deref() != Some(parent) {
                problems.push(format!(
                    "{AT}:{line}: `{key}` stands under {}; move it under the heading of `{parent}`",
                    table
                        .as_deref()
                        .map_or("no table heading".to_string(), |t| format!(
                            "the heading of `{t}`"
                        ))
                ));
            }
        }
        for key in &keys {
            if !seen.contains(key.as_str()) {
                problems.push(format!(
                    "{AT}: `{key}` is missing; add a row `| `{key}` | default | meaning |` under its table"
                ));
            }
        }

        let known: BTreeSet<&str> = tables.iter().map(String::as_str).collect();
        let headed: BTreeSet<&str> = documented.tables.iter().map(|(_, t)| t.as_str()).collect();
        for (line, table) in &documented.tables {
            if !known.contains(table.as_str()) {
                problems.push(format!(
                    "{AT}:{line}: heading `{table}` is not a table of the schema (a list of tables is written [[name]], a table [name])"
                ));
            }
        }
        for table in &tables {
            if !headed.contains(table.as_str()) {
                problems.push(format!("{AT}: no heading for `{table}`"));
            }
        }
        problems
    }

    #[test]
    fn the_reference_documents_exactly_the_keys_of_the_schema() {
        let problems = problems(ROOT, REFERENCE);
        assert!(
            problems.is_empty(),
            "the configuration reference and the schema disagree ({} problems):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }

    #[test]
    fn a_missing_unknown_or_misplaced_key_is_reported() {
        const INNER: &[Field] = &[super::f("b", Kind::Int), super::f("c", Kind::Str)];
        const FIELDS: &[Field] = &[
            super::f("t", Kind::Table("t", INNER)),
            super::f("l", Kind::Tables("l", INNER)),
        ];
        let good = "# Ref\n\n## `[t]`\n\n| key | default | meaning |\n|---|---|---|\n| `t.b` | 1 | b |\n| `t.c` | none | c |\n\n## `[[l]]`\n\n| `l.b` | 1 | b |\n| `l.c` | none | c |\n\n```toml\n| `t.zzz` | in a code block |\n```\n\n## Notes\n\n| word | `plain` text |\n|---|---|\n| `\"5s\"` | a value, not a key |\n";
        assert_eq!(problems(FIELDS, good), Vec::<String>::new());

        let bad = "## `[t]`\n\n| `t.b` | 1 | b |\n| `t.zzz` | 1 | no such key |\n| `l.c` | none | under [t] |\n\n## `[l]`\n\n| `t.b` | 1 | again |\n";
        assert_eq!(
            problems(FIELDS, bad),
            [
                "docs/configuration.md:4: `t.zzz` is not a key of the schema (src/config/schema.rs); fix its path or remove the row",
                "docs/configuration.md:5: `l.c` stands under the heading of `t`; move it under the heading of `l`",
                "docs/configuration.md:9: `t.b` is documented twice; keep one row",
                "docs/configuration.md:9: `t.b` stands under the heading of `l`; move it under the heading of `t`",
                "docs/configuration.md: `t.c` is missing; add a row `| `t.c` | default | meaning |` under its table",
                "docs/configuration.md: `l.b` is missing; add a row `| `l.b` | default | meaning |` under its table",
                "docs/configuration.md:7: heading `[l]` is not a table of the schema (a list of tables is written [[name]], a table [name])",
                "docs/configuration.md: no heading for `[[l]]`",
            ]
        );
    }
}
