//! The expressions of itonami workflows, compiled once and evaluated many times:
//! RFC 9535 JSONPath queries ([`path`]) and CEL conditions ([`cond`]).
//!
//! Nothing here knows Python: the binding converts the values a query or a
//! condition may read into the trees these modules take.

pub mod cond;
pub mod path;
