//! CEL conditions, compiled once.
//!
//! A condition reads only the context's top-level names it references
//! ([`Condition::variables`]), so a caller converts just those. The
//! interpreter is the `cel` crate with its standard library (strings,
//! regular expressions, timestamps and durations); CEL has no loops and the
//! parser bounds nesting, so an evaluation always ends. Neither compiling nor
//! evaluating lets a panic of the interpreter out: it becomes an error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};

use cel::{Context, Env, ExecutionError, Program};

pub use cel::objects::{Key, Map};
pub use cel::Value;

/// The longest condition accepted, in bytes of source text.
pub const MAX_SOURCE: usize = 64 * 1024;

/// The standard environment, built once: building it registers every
/// standard function, which would cost more than most evaluations.
fn stdlib() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib()))
}

/// A compiled condition.
pub struct Condition {
    program: Program,
    variables: Vec<String>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("variables", &self.variables)
            .finish_non_exhaustive()
    }
}

impl Condition {
    /// Parse `text`; the error is the parser's description of what is wrong.
    pub fn compile(text: &str) -> Result<Condition, String> {
        if text.len() > MAX_SOURCE {
            return Err(format!(
                "a condition may be at most {MAX_SOURCE} bytes, this one has {}",
                text.len()
            ));
        }
        crate::check_operators(text, "a condition")?;
        let program = match crate::with_stack(|| catch_unwind(|| stdlib().compile(text))) {
            Ok(Ok(program)) => program,
            Ok(Err(errors)) => return Err(errors.to_string()),
            Err(_) => return Err("the CEL parser failed on this expression".to_owned()),
        };
        let mut variables: Vec<String> = program
            .references()
            .variables()
            .into_iter()
            .map(str::to_owned)
            .collect();
        variables.sort_unstable();
        Ok(Condition { program, variables })
    }

    /// The identifiers the expression references, sorted (macro-bound names
    /// such as `i` in `items.exists(i, …)` included).
    pub fn variables(&self) -> &[String] {
        &self.variables
    }

    /// Evaluate with `bindings` as the variables; the error describes the
    /// failure (a missing key reads `missing key 'name'`).
    pub fn evaluate(&self, bindings: Vec<(String, Value)>) -> Result<Value, String> {
        let run = AssertUnwindSafe(|| {
            let mut context = Context::with_env(Arc::clone(stdlib()));
            for (name, value) in bindings {
                context.add_variable_from_value(name, value);
            }
            self.program.execute(&context)
        });
        match crate::with_stack(|| catch_unwind(run)) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(ExecutionError::NoSuchKey(key))) => Err(format!("missing key '{key}'")),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("the CEL interpreter failed on this expression".to_owned()),
        }
    }
}
