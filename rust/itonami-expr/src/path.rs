//! RFC 9535 JSONPath queries, compiled once.
//!
//! A query is parsed by `jsonpath-rust` and checked against the RFC: its
//! extension functions (`in`, `nin`, `any_of`, …) are refused. Two ways to
//! run it, so that a caller converts only what a query can read:
//!
//! - a *singular* query (only name and index selectors, `$.a.b[0]`) is a
//!   list of [`Step`]s the caller walks over its own values; nothing is
//!   converted;
//! - any other query splits into a leading run of such steps (its
//!   [`Query::prefix`]), which the caller walks the same way, and the rest,
//!   which [`Query::select`] evaluates over a [`Doc`] of the one value the
//!   prefix reached. A query whose filters read the root (`$` inside a
//!   filter) has no prefix: it needs the whole document.
//!
//! Every [`Doc`] node carries an `origin`, the caller's index of the value it
//! was built from, and [`Query::select`] answers with the origins of the
//! selected nodes, in the RFC's order: the caller hands back its own values
//! (the same objects, numbers as they were), never copies.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use indexmap::IndexMap;
use jsonpath_rust::parser::errors::JsonPathError;
use jsonpath_rust::parser::model::{
    Comparable, Filter, FilterAtom, FnArg, JpQuery, Segment, Selector, SingularQuery, Test,
    TestFunction,
};
use jsonpath_rust::parser::parse_json_path;
use jsonpath_rust::query::js_path_process;
use jsonpath_rust::query::queryable::Queryable;
use pest::error::LineColLocation;

/// One step of a singular query or of a query's prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// An object member by name.
    Name(String),
    /// An array element; negative counts from the end.
    Index(i64),
}

/// A node of the tree a query runs over: a JSON value and where it came from.
#[derive(Clone, Debug)]
pub struct Doc {
    /// The value.
    pub value: Value,
    /// The caller's index of the value this node was built from
    /// ([`Doc::NO_ORIGIN`] for a value a query made, such as a literal).
    pub origin: u32,
}

/// A JSON value whose objects keep their members in insertion order.
#[derive(Clone, Debug, Default)]
pub enum Value {
    /// `null`.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// Any other number (larger integers are approximated here; the caller
    /// still gets its own value back).
    Float(f64),
    /// A string.
    Str(String),
    /// An array.
    Array(Vec<Doc>),
    /// An object, in insertion order.
    Object(IndexMap<String, Doc>),
    /// A value of no JSON type: selected like any value, equal to nothing.
    Opaque,
}

impl Doc {
    /// The origin of a node that no caller value stands behind.
    pub const NO_ORIGIN: u32 = u32::MAX;

    /// A node for `value`, built from the caller's value number `origin`.
    pub fn new(value: Value, origin: u32) -> Doc {
        Doc { value, origin }
    }

    fn made(value: Value) -> Doc {
        Doc::new(value, Doc::NO_ORIGIN)
    }

    fn number(&self) -> Option<f64> {
        match self.value {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }
}

impl Default for Doc {
    fn default() -> Doc {
        Doc::made(Value::Null)
    }
}

impl PartialEq for Doc {
    /// JSON equality (RFC 9535 section 2.3.5.2.2): numbers by value, arrays
    /// element-wise, objects by their members; never by origin.
    fn eq(&self, other: &Doc) -> bool {
        match (&self.value, &other.value) {
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Int(_) | Value::Float(_), Value::Int(_) | Value::Float(_)) => {
                self.number() == other.number()
            }
            (Value::Null, Value::Null) => true,
            (Value::Bool(a), Value::Bool(b)) => a == b,
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Array(a), Value::Array(b)) => a == b,
            (Value::Object(a), Value::Object(b)) => {
                a.len() == b.len() && a.iter().all(|(k, v)| b.get(k) == Some(v))
            }
            _ => false,
        }
    }
}

impl From<&str> for Doc {
    fn from(s: &str) -> Doc {
        Doc::made(Value::Str(s.to_owned()))
    }
}

impl From<String> for Doc {
    fn from(s: String) -> Doc {
        Doc::made(Value::Str(s))
    }
}

impl From<bool> for Doc {
    fn from(b: bool) -> Doc {
        Doc::made(Value::Bool(b))
    }
}

impl From<i64> for Doc {
    fn from(i: i64) -> Doc {
        Doc::made(Value::Int(i))
    }
}

impl From<f64> for Doc {
    fn from(f: f64) -> Doc {
        Doc::made(Value::Float(f))
    }
}

impl From<Vec<Doc>> for Doc {
    fn from(items: Vec<Doc>) -> Doc {
        Doc::made(Value::Array(items))
    }
}

impl Queryable for Doc {
    fn get(&self, key: &str) -> Option<&Doc> {
        match &self.value {
            Value::Object(members) => members.get(key),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&Vec<Doc>> {
        match &self.value {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    fn as_object(&self) -> Option<Vec<(&str, &Doc)>> {
        match &self.value {
            Value::Object(members) => Some(members.iter().map(|(k, v)| (k.as_str(), v)).collect()),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self.value {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        self.number()
    }

    fn as_bool(&self) -> Option<bool> {
        match self.value {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn null() -> Doc {
        Doc::default()
    }

    fn extension_custom(_name: &str, _args: Vec<Cow<Doc>>) -> Doc {
        // Unreachable: compiling refuses every function the RFC does not name.
        Doc::default()
    }
}

/// A compiled query.
#[derive(Debug)]
pub struct Query {
    singular: Option<Vec<Step>>,
    prefix: Vec<Step>,
    rest: JpQuery,
}

impl Query {
    /// Parse `text`; the error says why it is not an RFC 9535 query.
    pub fn compile(text: &str) -> Result<Query, String> {
        check_blanks(text)?;
        crate::check_operators(text, "a JSONPath query")?;
        let ast = match crate::with_stack(|| catch_unwind(|| parse_json_path(text))) {
            Ok(parsed) => parsed.map_err(describe)?,
            Err(_) => return Err("the JSONPath parser failed on this query".to_owned()),
        };
        for segment in &ast.segments {
            check_segment(segment)?;
        }
        let steps: Vec<Step> = ast.segments.iter().map_while(step_of).collect();
        let singular = (steps.len() == ast.segments.len()).then(|| steps.clone());
        let (prefix, rest) = if ast.segments.iter().any(reads_root) {
            (Vec::new(), ast.segments)
        } else {
            let rest = ast.segments[steps.len()..].to_vec();
            (steps, rest)
        };
        Ok(Query {
            singular,
            prefix,
            rest: JpQuery::new(rest),
        })
    }

    /// The steps of a singular query (RFC 9535 section 2.3.5.1), which selects
    /// at most one value; `None` for any other query.
    pub fn singular(&self) -> Option<&[Step]> {
        self.singular.as_deref()
    }

    /// The leading steps every match lies under: walk them over the document,
    /// then [`select`](Query::select) over the value they reach. When a step
    /// selects nothing, neither does the query.
    pub fn prefix(&self) -> &[Step] {
        &self.prefix
    }

    /// The origins of the nodes the rest of the query (after its
    /// [`prefix`](Query::prefix)) selects in `doc`, in the RFC's order.
    /// A panic of the evaluator is an error here, never an unwind past it.
    pub fn select(&self, doc: &Doc) -> Result<Vec<u32>, String> {
        let run = AssertUnwindSafe(|| js_path_process(&self.rest, doc));
        match crate::with_stack(|| catch_unwind(run)) {
            Ok(Ok(found)) => Ok(found.into_iter().map(|r| r.val.origin).collect()),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the JSONPath evaluator failed on this query".to_owned()),
        }
    }
}

/// A parse error on one line: where, and what was expected there.
fn describe(error: JsonPathError) -> String {
    match error {
        JsonPathError::PestError(e) => {
            let column = match e.line_col {
                LineColLocation::Pos((_, column)) | LineColLocation::Span((_, column), _) => column,
            };
            format!("at column {column}: {}", e.variant.message())
        }
        other => other.to_string(),
    }
}

/// RFC 9535's rules for blank space, which the parser's grammar relaxes (it
/// skips blanks between any two tokens): outside string literals, none at
/// either end, none after `.` or `-`, none between two name characters
/// (`$.a b` is not the member `a b`).
fn check_blanks(text: &str) -> Result<(), String> {
    let is_blank = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let is_word = |c: char| c.is_alphanumeric() || c == '_' || !c.is_ascii();
    let chars: Vec<char> = text.chars().collect();
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            if c == '\\' {
                i += 1;
            } else if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            quote = Some(c);
            i += 1;
            continue;
        }
        if !is_blank(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_blank(chars[i]) {
            i += 1;
        }
        let before = start.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i).copied();
        let misplaced = match (before, after) {
            (None, _) | (_, None) => true,
            (Some('.' | '-'), _) => true,
            (Some(b), Some(a)) => is_word(b) && is_word(a),
        };
        if misplaced {
            return Err(format!(
                "at column {}: blank space not allowed here",
                start + 1
            ));
        }
    }
    Ok(())
}

fn step_of(segment: &Segment) -> Option<Step> {
    match segment {
        Segment::Selector(Selector::Name(name)) => Some(Step::Name(name.clone())),
        Segment::Selector(Selector::Index(i)) => Some(Step::Index(*i)),
        _ => None,
    }
}

fn check_segment(segment: &Segment) -> Result<(), String> {
    match segment {
        Segment::Descendant(inner) => check_segment(inner),
        Segment::Selector(selector) => check_selector(selector),
        Segment::Selectors(selectors) => selectors.iter().try_for_each(check_selector),
    }
}

fn check_selector(selector: &Selector) -> Result<(), String> {
    match selector {
        Selector::Filter(filter) => check_filter(filter),
        _ => Ok(()),
    }
}

fn check_filter(filter: &Filter) -> Result<(), String> {
    match filter {
        Filter::Or(parts) | Filter::And(parts) => parts.iter().try_for_each(check_filter),
        Filter::Atom(FilterAtom::Filter { expr, .. }) => check_filter(expr),
        Filter::Atom(FilterAtom::Test { expr, .. }) => check_test(expr),
        Filter::Atom(FilterAtom::Comparison(comparison)) => {
            let (lhs, rhs) = comparison.vals();
            check_comparable(lhs)?;
            check_comparable(rhs)
        }
    }
}

fn check_comparable(comparable: &Comparable) -> Result<(), String> {
    match comparable {
        Comparable::Function(function) => check_function(function),
        _ => Ok(()),
    }
}

fn check_test(test: &Test) -> Result<(), String> {
    match test {
        Test::RelQuery(segments) => segments.iter().try_for_each(check_segment),
        Test::AbsQuery(query) => query.segments.iter().try_for_each(check_segment),
        Test::Function(function) => match **function {
            // These give a value (RFC 9535 ValueType), which is no test.
            TestFunction::Length(_) | TestFunction::Value(_) | TestFunction::Count(_) => {
                Err("length(), count() and value() give a value, not a test".to_owned())
            }
            _ => check_function(function),
        },
    }
}

/// Whether `segments` form a singular query.
fn all_steps(segments: &[Segment]) -> bool {
    segments.iter().all(|segment| step_of(segment).is_some())
}

/// A function's arguments.
fn arguments(function: &TestFunction) -> Vec<&FnArg> {
    match function {
        TestFunction::Custom(_, args) => args.iter().collect(),
        TestFunction::Length(arg) => vec![arg],
        TestFunction::Value(arg) | TestFunction::Count(arg) => vec![arg],
        TestFunction::Search(a, b) | TestFunction::Match(a, b) => vec![a, b],
    }
}

fn check_function(function: &TestFunction) -> Result<(), String> {
    match function {
        TestFunction::Custom(name, _) => return Err(format!("unknown function {name}()")),
        // length() takes a value: a query as its argument must be singular.
        TestFunction::Length(arg) => {
            if let FnArg::Test(test) = &**arg {
                let singular = match &**test {
                    Test::RelQuery(segments) => all_steps(segments),
                    Test::AbsQuery(query) => all_steps(&query.segments),
                    Test::Function(_) => true,
                };
                if !singular {
                    return Err("length() takes a singular query".to_owned());
                }
            }
        }
        _ => {}
    }
    arguments(function)
        .into_iter()
        .try_for_each(|arg| match arg {
            FnArg::Literal(_) => Ok(()),
            FnArg::Test(test) => check_test(test),
            FnArg::Filter(filter) => check_filter(filter),
        })
}

/// Whether a filter inside `segment` reads the document's root (`$`).
fn reads_root(segment: &Segment) -> bool {
    match segment {
        Segment::Descendant(inner) => reads_root(inner),
        Segment::Selector(selector) => selector_reads_root(selector),
        Segment::Selectors(selectors) => selectors.iter().any(selector_reads_root),
    }
}

fn selector_reads_root(selector: &Selector) -> bool {
    matches!(selector, Selector::Filter(filter) if filter_reads_root(filter))
}

fn filter_reads_root(filter: &Filter) -> bool {
    match filter {
        Filter::Or(parts) | Filter::And(parts) => parts.iter().any(filter_reads_root),
        Filter::Atom(FilterAtom::Filter { expr, .. }) => filter_reads_root(expr),
        Filter::Atom(FilterAtom::Test { expr, .. }) => test_reads_root(expr),
        Filter::Atom(FilterAtom::Comparison(comparison)) => {
            let (lhs, rhs) = comparison.vals();
            comparable_reads_root(lhs) || comparable_reads_root(rhs)
        }
    }
}

fn comparable_reads_root(comparable: &Comparable) -> bool {
    match comparable {
        Comparable::Literal(_) => false,
        Comparable::SingularQuery(SingularQuery::Root(_)) => true,
        Comparable::SingularQuery(SingularQuery::Current(_)) => false,
        Comparable::Function(function) => function_reads_root(function),
    }
}

fn test_reads_root(test: &Test) -> bool {
    match test {
        Test::AbsQuery(_) => true,
        Test::RelQuery(segments) => segments.iter().any(reads_root),
        Test::Function(function) => function_reads_root(function),
    }
}

fn function_reads_root(function: &TestFunction) -> bool {
    arguments(function).into_iter().any(|arg| match arg {
        FnArg::Literal(_) => false,
        FnArg::Test(test) => test_reads_root(test),
        FnArg::Filter(filter) => filter_reads_root(filter),
    })
}
