//! The expressions of itonami workflows, compiled once and evaluated many times:
//! RFC 9535 JSONPath queries ([`path`]) and CEL conditions ([`cond`]).
//!
//! Nothing here knows Python: the binding converts the values a query or a
//! condition may read into the trees these modules take.

pub mod cond;
pub mod path;

/// Most operators, selectors and brackets an expression may have: the
/// parsers and the interpreter recurse once per level of the syntax tree,
/// and the tree is at most as deep as this count.
pub const MAX_OPERATORS: usize = 500;

/// Refuse `text` when it has more than [`MAX_OPERATORS`] characters that can
/// deepen its syntax tree. Counted everywhere, string literals included: a
/// scanner that skipped literals could be fooled into passing a deep
/// expression, and no real condition or query comes near the bound.
pub fn check_operators(text: &str, what: &str) -> Result<(), String> {
    let count = text
        .bytes()
        .filter(|b| b"+-*/%.<>=!&|?:[({,@$".contains(b))
        .count();
    if count > MAX_OPERATORS {
        return Err(format!(
            "{what} may have at most {MAX_OPERATORS} operators, selectors and brackets, \
             this one has {count}"
        ));
    }
    Ok(())
}

/// Run `f` with enough stack for a syntax tree within [`MAX_OPERATORS`]:
/// on the caller's stack when plenty is left, else on a fresh one (a thread
/// with a small stack, a debug build). A stack overflow would abort the
/// whole process, which no expression may do.
pub fn with_stack<R>(f: impl FnOnce() -> R) -> R {
    const RED_ZONE: usize = 4 * 1024 * 1024;
    const STACK: usize = 16 * 1024 * 1024;
    stacker::maybe_grow(RED_ZONE, STACK, f)
}
