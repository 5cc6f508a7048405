//! The rules of DESIGN §2, checked in the order of its table so that the first failing row names the
//! reason.
//!
//! # How a body is read
//!
//! 1. Size: more than [`MAX_BODY_BYTES`] is `too_large`, before any parsing.
//! 2. One pass of `serde_json`'s parser builds a [`Json`] tree that refuses duplicate keys at any
//!    depth; invalid UTF-8, syntax errors, raw control characters, nesting deeper than
//!    `serde_json`'s recursion limit (128) and numbers outside the `f64` range are parse errors.
//!    Any of these, a body that is not an object, or an unknown field at the top level or inside
//!    the `consent` or `routing` objects, is `malformed`.
//! 3. The fields are then taken out of the tree by value and checked row by row, so the strings of
//!    a valid request are moved, not copied, into the [`ValidatedRequest`].
//!
//! # Wrong JSON types and `null`
//!
//! A known field holding the wrong JSON type (`"request_id": 5`, `"routing": []`) fails *its own
//! row*, not the body row: it is `invalid` at the position of that field's row, so a request with
//! both a numeric `display_name` and a PII attribute key is `invalid` (display name row first) and
//! one with a PII key and a numeric `routing.priority` is `pii_blocked`. The consent row's reason is
//! `consent_missing`, so anything but a well-formed `{data_processing: bool, marketing?: bool}`
//! object (`"consent": true`, `"data_processing": "yes"`, `"marketing": 1`) is `consent_missing`:
//! we hold no consent record we could rely on.
//!
//! `null` for an optional field (`display_name`, `attributes`, `routing` and its members,
//! `initial_message`, `consent.marketing`) means absent. `null` for `request_id` or `guest_id` is
//! a missing required field (`invalid`); `null` for `consent` is missing consent; `null` as an
//! attribute value is `invalid` (only strings, numbers and booleans are allowed).
//!
//! Integer literals beyond the 64-bit range are read as floating-point numbers (as `serde_json`
//! does); `routing.priority` must be a JSON integer, so `1.0` or `1e20` there is `invalid`.

use std::collections::BTreeMap;
use std::io;

use serde_json::Value;

use super::json::Json;
use super::probe::probe;
use super::{Consent, RejectReason, Rejection, Routing, ValidatedRequest};

pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_CUSTOM_ATTRIBUTES_BYTES: usize = 2048;
pub const DEFAULT_PII_PATTERNS: &[&str] = &["email", "phone", "ssn", "credit", "password", "ip_address"];

const MAX_ID_CHARS: usize = 128;
const MAX_DISPLAY_NAME_CHARS: usize = 64;
const MAX_ATTRIBUTES: usize = 100;
const MAX_ATTRIBUTE_KEY_CHARS: usize = 64;
const MAX_ATTRIBUTE_STRING_CHARS: usize = 256;
/// Attribute keys with these prefixes would collide with the routing hints and consent flags that
/// travel in the same custom-attribute map.
const RESERVED_KEY_PREFIXES: [&str; 2] = ["routing.", "consent."];
const MAX_QUEUE_CHARS: usize = 128;
const MAX_SKILLS: usize = 20;
const MAX_SKILL_CHARS: usize = 64;
const MAX_LANGUAGE_CHARS: usize = 35;
const MAX_PRIORITY: u64 = 10;
const MAX_INITIAL_MESSAGE_CHARS: usize = 2000;

const TOP_LEVEL_FIELDS: [&str; 7] = [
    "request_id",
    "guest_id",
    "display_name",
    "attributes",
    "consent",
    "routing",
    "initial_message",
];
const CONSENT_FIELDS: [&str; 2] = ["data_processing", "marketing"];
const ROUTING_FIELDS: [&str; 4] = ["queue", "skills", "language", "priority"];

/// Configurable parts of validation (the PII key patterns).
#[derive(Debug, Clone)]
pub struct ValidationPolicy {
    /// Normalised (see [`normalise`]), non-empty, sorted and deduplicated.
    pii_patterns: Vec<String>,
}

impl Default for ValidationPolicy {
    fn default() -> Self {
        Self::new(DEFAULT_PII_PATTERNS.iter().copied())
    }
}

impl ValidationPolicy {
    /// Patterns are normalised once here (lowercased, `.` `_` `-` removed); a pattern that is empty
    /// after normalisation would match every key and is ignored.
    pub fn new<S: AsRef<str>>(patterns: impl IntoIterator<Item = S>) -> Self {
        let mut pii_patterns: Vec<String> = patterns
            .into_iter()
            .map(|p| {
                let mut normalised = String::new();
                normalise(p.as_ref(), &mut normalised);
                normalised
            })
            .filter(|p| !p.is_empty())
            .collect();
        pii_patterns.sort_unstable();
        pii_patterns.dedup();
        Self { pii_patterns }
    }

    /// True when no pattern is left: every attribute key would pass the PII rule.
    pub fn blocks_nothing(&self) -> bool {
        self.pii_patterns.is_empty()
    }

    /// Comma-separated patterns, as in `PII_KEY_PATTERNS`.
    pub fn from_csv(csv: &str) -> Self {
        Self::new(csv.split(',').map(str::trim).filter(|p| !p.is_empty()))
    }

    /// The (normalised) pattern that `key` contains, if any. `scratch` is reused between keys.
    fn pii_pattern_in<'p>(&'p self, key: &str, scratch: &mut String) -> Option<&'p str> {
        normalise(key, scratch);
        self.pii_patterns
            .iter()
            .map(String::as_str)
            .find(|p| scratch.contains(p))
    }
}

/// Lowercase, with the separators `.`, `_` and `-` removed, written into `out`.
fn normalise(s: &str, out: &mut String) {
    out.clear();
    out.extend(
        s.chars()
            .filter(|c| !matches!(c, '.' | '_' | '-'))
            .flat_map(char::to_lowercase),
    );
}

/// Turns a raw body into a [`ValidatedRequest`], or names the first rule of DESIGN §2 it breaks.
pub fn validate(body: &[u8], policy: &ValidationPolicy) -> Result<ValidatedRequest, Rejection> {
    // Row 1: the body. Size first, before spending anything on parsing.
    if body.len() > MAX_BODY_BYTES {
        let detail = format!("body is {} bytes, over the limit of {MAX_BODY_BYTES}", body.len());
        return Err(Fail::new(RejectReason::TooLarge, detail).reject(Context::default()));
    }
    let top = match serde_json::from_slice::<Json>(body) {
        Ok(Json::Object(top)) => top,
        Ok(other) => {
            let detail = format!("body must be a JSON object, not {}", other.describe());
            return Err(Fail::malformed(detail).reject(Context::default()));
        }
        Err(err) => {
            let probed = probe(body);
            let context = Context {
                request_id: probed.request_id.filter(|id| is_well_formed_id(id)),
                guest_id: probed.guest_id.filter(|id| is_well_formed_id(id)),
                consent: probed.consent,
            };
            return Err(Fail::malformed(format!("body is not valid JSON: {err}")).reject(context));
        }
    };
    let mut raw = RawRequest::take(top);
    // Well-formed consent flags: context for any rejection, and the flags among the custom attributes.
    let consent = raw.consent.as_ref().and_then(|c| parse_consent(c).ok());
    if let Err(fail) = raw.check_no_unknown_fields() {
        let context = Context {
            request_id: well_formed_id_in(raw.request_id.as_ref()),
            guest_id: well_formed_id_in(raw.guest_id.as_ref()),
            consent,
        };
        return Err(fail.reject(context));
    }

    // Row 2: the ids. Both are checked so that a rejection can still carry the well-formed one.
    let request_id = check_id("request_id", raw.request_id.take());
    let guest_id = check_id("guest_id", raw.guest_id.take());
    let (request_id, guest_id) = match (request_id, guest_id) {
        (Ok(request_id), Ok(guest_id)) => (request_id, guest_id),
        (Err(fail), guest_id) => {
            return Err(fail.reject(Context {
                request_id: None,
                guest_id: guest_id.ok(),
                consent,
            }));
        }
        (Ok(request_id), Err(fail)) => {
            return Err(fail.reject(Context {
                request_id: Some(request_id),
                guest_id: None,
                consent,
            }));
        }
    };

    match check_remaining_rows(raw, consent, policy) {
        Ok(rest) => Ok(ValidatedRequest {
            request_id,
            guest_id,
            display_name: rest.display_name,
            attributes: rest.attributes,
            consent: rest.consent,
            routing: rest.routing,
            initial_message: rest.initial_message,
            custom_attributes: rest.custom_attributes,
        }),
        Err(fail) => Err(fail.reject(Context {
            request_id: Some(request_id),
            guest_id: Some(guest_id),
            consent,
        })),
    }
}

/// Rows 3 to 8 of the table, in order.
fn check_remaining_rows(raw: RawRequest, consent: Option<Consent>, policy: &ValidationPolicy) -> Result<Checked, Fail> {
    let display_name = check_display_name(raw.display_name)?;
    let CheckedAttributes {
        attributes,
        custom: custom_attributes,
    } = check_attributes(raw.attributes, raw.routing.as_ref(), consent)?;
    check_pii(&attributes, policy)?;
    let consent = check_consent(raw.consent.as_ref())?;
    let routing = check_routing(raw.routing)?;
    let initial_message = check_initial_message(raw.initial_message)?;
    Ok(Checked {
        display_name,
        attributes,
        consent,
        routing,
        initial_message,
        custom_attributes,
    })
}

/// The known top-level fields, taken out of the parsed object; `unknown` is whatever was left.
struct RawRequest {
    request_id: Option<Json>,
    guest_id: Option<Json>,
    display_name: Option<Json>,
    attributes: Option<Json>,
    consent: Option<Json>,
    routing: Option<Json>,
    initial_message: Option<Json>,
    unknown: BTreeMap<String, Json>,
}

impl RawRequest {
    fn take(mut top: BTreeMap<String, Json>) -> Self {
        Self {
            request_id: top.remove("request_id"),
            guest_id: top.remove("guest_id"),
            display_name: top.remove("display_name"),
            attributes: top.remove("attributes"),
            consent: top.remove("consent"),
            routing: top.remove("routing"),
            initial_message: top.remove("initial_message"),
            unknown: top,
        }
    }

    /// Unknown fields at every level with a fixed shape: the top level, `consent`, `routing`.
    /// (`consent` or `routing` of the wrong type is left to its own row.)
    fn check_no_unknown_fields(&self) -> Result<(), Fail> {
        if let Some(field) = self.unknown.keys().next() {
            return Err(unknown_field("", field, &TOP_LEVEL_FIELDS));
        }
        for (name, value, known) in [
            ("consent.", &self.consent, &CONSENT_FIELDS[..]),
            ("routing.", &self.routing, &ROUTING_FIELDS[..]),
        ] {
            if let Some(Json::Object(fields)) = value
                && let Some(field) = fields.keys().find(|k| !known.contains(&k.as_str()))
            {
                return Err(unknown_field(name, field, known));
            }
        }
        Ok(())
    }
}

fn unknown_field(prefix: &str, field: &str, known: &[&str]) -> Fail {
    let expected: Vec<String> = known.iter().map(|k| format!("{prefix}{k}")).collect();
    let named = if is_key_shaped(field) {
        quote(&format!("{prefix}{field}"))
    } else {
        unquoted(field)
    };
    Fail::malformed(format!(
        "unknown field {named} (expected one of: {})",
        expected.join(", ")
    ))
}

/// What rows 3 to 8 produce.
struct Checked {
    display_name: Option<String>,
    attributes: BTreeMap<String, Value>,
    consent: Consent,
    routing: Option<Routing>,
    initial_message: Option<String>,
    custom_attributes: BTreeMap<String, String>,
}

/// A failed rule, before the request's context is attached.
#[derive(Debug, Clone)]
struct Fail {
    reason: RejectReason,
    detail: String,
}

impl Fail {
    fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
    fn malformed(detail: impl Into<String>) -> Self {
        Self::new(RejectReason::Malformed, detail)
    }
    fn invalid(detail: impl Into<String>) -> Self {
        Self::new(RejectReason::Invalid, detail)
    }
    fn reject(self, context: Context) -> Rejection {
        Rejection {
            reason: self.reason,
            detail: self.detail,
            request_id: context.request_id,
            guest_id: context.guest_id,
            consent: context.consent,
        }
    }
}

/// What a rejection may carry about the request: only well-formed ids and consent flags.
#[derive(Default)]
struct Context {
    request_id: Option<String>,
    guest_id: Option<String>,
    consent: Option<Consent>,
}

/// `Some(value)` for a present, non-null optional field.
fn present(value: Option<Json>) -> Option<Json> {
    value.filter(|v| !matches!(v, Json::Null))
}

/// Whether `s` has `min..=max` Unicode scalar values, without counting when the byte length decides.
fn chars_within(s: &str, min: usize, max: usize) -> bool {
    if s.len() < min {
        return false; // fewer bytes than `min` means fewer chars too
    }
    if s.len() <= max {
        return true; // never more chars than bytes
    }
    (min..=max).contains(&s.chars().count())
}

/// `min..=max` chars, none of them a control character.
fn is_plain_text(s: &str, min: usize, max: usize) -> bool {
    chars_within(s, min, max) && !s.chars().any(char::is_control)
}

fn is_well_formed_id(id: &str) -> bool {
    // The alphabet is ASCII, so bytes are chars.
    (1..=MAX_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The body's `request_id` if it has a well-formed one, read as leniently as for a rejection's
/// context (also from a body that is not valid JSON after it).
pub fn request_id_of(body: &[u8]) -> Option<String> {
    probe(body).request_id.filter(|id| is_well_formed_id(id))
}

/// A copy of the id in `value` if it is well formed (for the context of a rejection).
fn well_formed_id_in(value: Option<&Json>) -> Option<String> {
    value
        .and_then(Json::as_str)
        .filter(|id| is_well_formed_id(id))
        .map(str::to_owned)
}

fn check_id(field: &str, value: Option<Json>) -> Result<String, Fail> {
    match present(value) {
        None => Err(Fail::invalid(format!("{field} is required"))),
        Some(Json::String(id)) if is_well_formed_id(&id) => Ok(id),
        Some(Json::String(_)) => Err(Fail::invalid(format!(
            "{field} must be 1-{MAX_ID_CHARS} characters of A-Z a-z 0-9 . _ : -"
        ))),
        Some(other) => Err(Fail::invalid(format!(
            "{field} must be a string, not {}",
            other.describe()
        ))),
    }
}

fn check_display_name(value: Option<Json>) -> Result<Option<String>, Fail> {
    match present(value) {
        None => Ok(None),
        Some(Json::String(name)) if is_plain_text(&name, 1, MAX_DISPLAY_NAME_CHARS) => Ok(Some(name)),
        Some(Json::String(_)) => Err(Fail::invalid(format!(
            "display_name must be 1-{MAX_DISPLAY_NAME_CHARS} characters without control characters"
        ))),
        Some(other) => Err(Fail::invalid(format!(
            "display_name must be a string, not {}",
            other.describe()
        ))),
    }
}

/// 1 to 64 characters of `A-Z a-z 0-9 . _ -`: an attribute key, or a name safe to quote.
fn is_key_shaped(name: &str) -> bool {
    // The alphabet is ASCII, so bytes are chars.
    (1..=MAX_ATTRIBUTE_KEY_CHARS).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// How a detail names a key or field that is not key-shaped: not quoted, since such a name is
/// often a value put in the wrong place (an e-mail address, a name), and the detail travels in a
/// header and in logs.
fn unquoted(name: &str) -> String {
    format!("({} characters, not quoted)", name.chars().count())
}

fn check_attribute_key(key: &str) -> Result<(), Fail> {
    if !is_key_shaped(key) {
        return Err(Fail::invalid(format!(
            "an attribute key {} must be 1-{MAX_ATTRIBUTE_KEY_CHARS} characters of A-Z a-z 0-9 . _ -",
            unquoted(key)
        )));
    }
    if let Some(prefix) = RESERVED_KEY_PREFIXES.iter().find(|p| key.starts_with(*p)) {
        return Err(Fail::invalid(format!(
            "attribute key {} uses the reserved prefix {prefix:?} (routing hints and consent flags travel under it)",
            quote(key)
        )));
    }
    Ok(())
}

/// Row 4: the attributes, and the custom attributes actually sent to Genesys (attributes plus
/// routing hints and consent flags) within [`MAX_CUSTOM_ATTRIBUTES_BYTES`].
///
/// `routing` has not been checked yet (its row comes later); the hints taken from it here are its
/// members of the right JSON type, which for a request that passes every row are exactly the
/// validated ones, so the map computed here is the one stored in the [`ValidatedRequest`].
fn check_attributes(
    value: Option<Json>,
    routing: Option<&Json>,
    consent: Option<Consent>,
) -> Result<CheckedAttributes, Fail> {
    let entries = match present(value) {
        None => BTreeMap::new(),
        Some(Json::Object(entries)) => entries,
        Some(other) => {
            return Err(Fail::invalid(format!(
                "attributes must be an object, not {}",
                other.describe()
            )));
        }
    };
    if entries.len() > MAX_ATTRIBUTES {
        return Err(Fail::invalid(format!(
            "attributes has {} entries, at most {MAX_ATTRIBUTES} are allowed",
            entries.len()
        )));
    }
    let mut attributes = BTreeMap::new();
    let mut custom = BTreeMap::new();
    for (key, value) in entries {
        check_attribute_key(&key)?;
        let (value, text) = match value {
            Json::String(s) if chars_within(&s, 0, MAX_ATTRIBUTE_STRING_CHARS) => {
                let text = s.clone();
                (Value::String(s), text)
            }
            Json::String(_) => {
                return Err(Fail::invalid(format!(
                    "attribute {}: a string value must have at most {MAX_ATTRIBUTE_STRING_CHARS} characters",
                    quote(&key)
                )));
            }
            Json::Number(n) => {
                let text = n.to_string();
                (Value::Number(n), text)
            }
            Json::Bool(b) => (Value::Bool(b), bool_text(b)),
            other => {
                return Err(Fail::invalid(format!(
                    "attribute {} must be a string, number or boolean, not {}",
                    quote(&key),
                    other.describe()
                )));
            }
        };
        custom.insert(key.clone(), text);
        attributes.insert(key, value);
    }
    add_routing_hints(&mut custom, routing);
    let consent = consent.unwrap_or(Consent {
        data_processing: false,
        marketing: false,
    });
    custom.insert("consent.data_processing".to_owned(), bool_text(consent.data_processing));
    custom.insert("consent.marketing".to_owned(), bool_text(consent.marketing));

    let size = serialized_len(&custom);
    if size > MAX_CUSTOM_ATTRIBUTES_BYTES {
        return Err(Fail::invalid(format!(
            "custom attributes (attributes plus routing hints and consent flags) serialise to {size} bytes, \
             over the limit of {MAX_CUSTOM_ATTRIBUTES_BYTES}"
        )));
    }
    Ok(CheckedAttributes { attributes, custom })
}

/// The attributes as sent, and the custom attributes that go to Genesys.
struct CheckedAttributes {
    attributes: BTreeMap<String, Value>,
    custom: BTreeMap<String, String>,
}

fn bool_text(b: bool) -> String {
    if b { "true" } else { "false" }.to_owned()
}

/// `routing.queue`, `routing.skills` (comma-joined), `routing.language`, `routing.priority`: the
/// members of `routing` that have the right JSON type (see [`check_attributes`]).
fn add_routing_hints(custom: &mut BTreeMap<String, String>, routing: Option<&Json>) {
    let Some(Json::Object(routing)) = routing else { return };
    if let Some(Json::String(queue)) = routing.get("queue") {
        custom.insert("routing.queue".to_owned(), queue.clone());
    }
    if let Some(Json::Array(skills)) = routing.get("skills") {
        let mut skills = skills.iter().filter_map(Json::as_str).peekable();
        if skills.peek().is_some() {
            let mut joined = String::new();
            for (i, skill) in skills.enumerate() {
                if i > 0 {
                    joined.push(',');
                }
                joined.push_str(skill);
            }
            custom.insert("routing.skills".to_owned(), joined);
        }
    }
    if let Some(Json::String(language)) = routing.get("language") {
        custom.insert("routing.language".to_owned(), language.clone());
    }
    if let Some(Json::Number(priority)) = routing.get("priority") {
        custom.insert("routing.priority".to_owned(), priority.to_string());
    }
}

/// The length of `serde_json::to_vec(value)`, without building the vector.
fn serialized_len(value: &BTreeMap<String, String>) -> usize {
    struct Counter(usize);
    impl io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        // A map of strings cannot fail to serialise; if it somehow did, it is not sendable.
        Err(_) => usize::MAX,
    }
}

/// Row 5: no attribute key contains a PII pattern.
fn check_pii(attributes: &BTreeMap<String, Value>, policy: &ValidationPolicy) -> Result<(), Fail> {
    let mut scratch = String::with_capacity(MAX_ATTRIBUTE_KEY_CHARS);
    for key in attributes.keys() {
        if let Some(pattern) = policy.pii_pattern_in(key, &mut scratch) {
            return Err(Fail::new(
                RejectReason::PiiBlocked,
                format!(
                    "attribute key {} matches the PII pattern {pattern:?} (compared lowercased without . _ -)",
                    quote(key)
                ),
            ));
        }
    }
    Ok(())
}

/// The well-formed consent shape `{data_processing: bool, marketing?: bool | null}`, whatever the
/// value of `data_processing`. Unknown members were refused earlier (`malformed`).
fn parse_consent(value: &Json) -> Result<Consent, &'static str> {
    let Json::Object(fields) = value else {
        return Err("consent must be an object {data_processing: bool, marketing?: bool}");
    };
    let data_processing = match fields.get("data_processing") {
        None | Some(Json::Null) => return Err("consent.data_processing is missing"),
        Some(Json::Bool(b)) => *b,
        Some(_) => return Err("consent.data_processing must be a boolean"),
    };
    let marketing = match fields.get("marketing") {
        None | Some(Json::Null) => false,
        Some(Json::Bool(b)) => *b,
        Some(_) => return Err("consent.marketing must be a boolean"),
    };
    Ok(Consent {
        data_processing,
        marketing,
    })
}

/// Row 6: `consent.data_processing` is `true`.
fn check_consent(value: Option<&Json>) -> Result<Consent, Fail> {
    let missing = |detail: &str| Fail::new(RejectReason::ConsentMissing, detail);
    let value = match value {
        None | Some(Json::Null) => return Err(missing("consent is missing")),
        Some(value) => value,
    };
    match parse_consent(value) {
        Ok(consent) if consent.data_processing => Ok(consent),
        Ok(_) => Err(missing("consent.data_processing is false")),
        Err(detail) => Err(missing(detail)),
    }
}

/// Row 7: the routing hints.
fn check_routing(value: Option<Json>) -> Result<Option<Routing>, Fail> {
    let mut fields = match present(value) {
        None => return Ok(None),
        Some(Json::Object(fields)) => fields,
        Some(other) => {
            return Err(Fail::invalid(format!(
                "routing must be an object, not {}",
                other.describe()
            )));
        }
    };
    let queue = match present(fields.remove("queue")) {
        None => None,
        Some(Json::String(queue)) if is_plain_text(&queue, 1, MAX_QUEUE_CHARS) => Some(queue),
        Some(Json::String(_)) => {
            return Err(Fail::invalid(format!(
                "routing.queue must be 1-{MAX_QUEUE_CHARS} characters without control characters"
            )));
        }
        Some(other) => {
            return Err(Fail::invalid(format!(
                "routing.queue must be a string, not {}",
                other.describe()
            )));
        }
    };
    let skills = match present(fields.remove("skills")) {
        None => Vec::new(),
        Some(Json::Array(items)) if items.len() > MAX_SKILLS => {
            return Err(Fail::invalid(format!(
                "routing.skills has {} entries, at most {MAX_SKILLS} are allowed",
                items.len()
            )));
        }
        Some(Json::Array(items)) => {
            let mut skills = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Json::String(skill) if is_plain_text(&skill, 1, MAX_SKILL_CHARS) => skills.push(skill),
                    _ => {
                        return Err(Fail::invalid(format!(
                            "routing.skills[{i}] must be a string of 1-{MAX_SKILL_CHARS} characters without control characters"
                        )));
                    }
                }
            }
            skills
        }
        Some(other) => {
            return Err(Fail::invalid(format!(
                "routing.skills must be an array, not {}",
                other.describe()
            )));
        }
    };
    let language = match present(fields.remove("language")) {
        None => None,
        Some(Json::String(language)) if is_language_tag(&language) => Some(language),
        _ => {
            return Err(Fail::invalid(format!(
                "routing.language must be a BCP-47 language tag such as \"en\" or \"pt-BR\" \
                 (at most {MAX_LANGUAGE_CHARS} characters)"
            )));
        }
    };
    let priority = match present(fields.remove("priority")) {
        None => None,
        Some(Json::Number(n)) if n.as_u64().is_some_and(|p| p <= MAX_PRIORITY) => {
            n.as_u64().and_then(|p| u8::try_from(p).ok())
        }
        _ => {
            return Err(Fail::invalid(format!(
                "routing.priority must be an integer from 0 to {MAX_PRIORITY}"
            )));
        }
    };
    Ok(Some(Routing {
        queue,
        skills,
        language,
        priority,
    }))
}

/// `^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$`, at most 35 characters.
fn is_language_tag(tag: &str) -> bool {
    if tag.len() > MAX_LANGUAGE_CHARS {
        return false; // ASCII only, so bytes are chars
    }
    let mut subtags = tag.split('-');
    let primary = subtags.next().unwrap_or_default();
    (2..=3).contains(&primary.len())
        && primary.bytes().all(|b| b.is_ascii_alphabetic())
        && subtags.all(|s| (1..=8).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Row 8: the initial message.
fn check_initial_message(value: Option<Json>) -> Result<Option<String>, Fail> {
    match present(value) {
        None => Ok(None),
        Some(Json::String(message)) if chars_within(&message, 1, MAX_INITIAL_MESSAGE_CHARS) => Ok(Some(message)),
        Some(Json::String(_)) => Err(Fail::invalid(format!(
            "initial_message must be 1-{MAX_INITIAL_MESSAGE_CHARS} characters"
        ))),
        Some(other) => Err(Fail::invalid(format!(
            "initial_message must be a string, not {}",
            other.describe()
        ))),
    }
}

/// A field name or attribute key for a rejection detail: escaped (so it cannot break a header or a
/// log line) and cut to 64 characters.
fn quote(name: &str) -> String {
    const MAX: usize = 64;
    let mut out = String::with_capacity(name.len().min(MAX) + 2);
    out.push('`');
    for (i, c) in name.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('`');
    out
}
