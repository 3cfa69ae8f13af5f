//! `JsonPath` and `Condition`: the expressions of `itonami-expr` over Python
//! values. Only what an expression can read is looked at: a singular query
//! walks the caller's dicts and lists, any other query converts the one value
//! its prefix reaches, a condition converts the top-level names it references.
//! Every failure is a `ValueError` whose message the Python layer wraps.

use itonami_expr::cond::{self, Key, Map};
use itonami_expr::path::{self, Doc, IndexMap, Step};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use std::collections::HashMap;
use std::sync::Arc;

/// How deep a value may nest before it is refused (a cycle, or a hostile
/// payload); orjson, which decodes every payload, stops at 1024 too.
const MAX_DEPTH: usize = 1024;

fn too_deep() -> PyErr {
    PyValueError::new_err(format!("a value nests more than {MAX_DEPTH} levels deep"))
}

/// A step of a query, its names as Python strings made once.
enum PyStep {
    Name(Py<PyString>),
    Index(i64),
}

fn py_steps(py: Python<'_>, steps: &[Step]) -> Vec<PyStep> {
    steps
        .iter()
        .map(|step| match step {
            Step::Name(name) => PyStep::Name(PyString::new(py, name).unbind()),
            Step::Index(i) => PyStep::Index(*i),
        })
        .collect()
}

/// The value `steps` reach from `value`, or `None` when one selects nothing.
fn walk<'py>(
    mut value: Bound<'py, PyAny>,
    steps: &[PyStep],
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = value.py();
    for step in steps {
        let next = match step {
            PyStep::Name(name) => match value.cast::<PyDict>() {
                Ok(dict) => dict.get_item(name.bind(py))?,
                Err(_) => None,
            },
            PyStep::Index(i) => match value.cast::<PyList>() {
                Ok(list) => {
                    let len = list.len() as i64;
                    let at = if *i < 0 { len + *i } else { *i };
                    if (0..len).contains(&at) {
                        Some(list.get_item(at as usize)?)
                    } else {
                        None
                    }
                }
                Err(_) => None,
            },
        };
        match next {
            Some(v) => value = v,
            None => return Ok(None),
        }
    }
    Ok(Some(value))
}

/// `value` as a query tree; `seen` gets every value converted, its index the
/// node's origin.
fn to_doc<'py>(
    value: &Bound<'py, PyAny>,
    seen: &mut Vec<Bound<'py, PyAny>>,
    depth: usize,
) -> PyResult<Doc> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let origin = u32::try_from(seen.len())
        .map_err(|_| PyValueError::new_err("a value too large to query"))?;
    seen.push(value.clone());
    let converted = if value.is_none() {
        path::Value::Null
    } else if let Ok(b) = value.cast::<PyBool>() {
        path::Value::Bool(b.is_true())
    } else if let Ok(s) = value.cast::<PyString>() {
        path::Value::Str(s.to_str()?.to_owned())
    } else if value.is_instance_of::<PyInt>() {
        match value.extract::<i64>() {
            Ok(i) => path::Value::Int(i),
            // Beyond 64 bits: compared approximately, handed back exactly.
            Err(_) => path::Value::Float(value.extract::<f64>().unwrap_or(f64::INFINITY)),
        }
    } else if let Ok(f) = value.cast::<PyFloat>() {
        path::Value::Float(f.value())
    } else if let Ok(list) = value.cast::<PyList>() {
        let mut items = Vec::with_capacity(list.len());
        for item in list.iter() {
            items.push(to_doc(&item, seen, depth + 1)?);
        }
        path::Value::Array(items)
    } else if let Ok(dict) = value.cast::<PyDict>() {
        let mut members = IndexMap::with_capacity(dict.len());
        for (key, item) in dict.iter() {
            // Only string keys can be named by a query.
            if let Ok(key) = key.cast::<PyString>() {
                members.insert(key.to_str()?.to_owned(), to_doc(&item, seen, depth + 1)?);
            }
        }
        path::Value::Object(members)
    } else {
        path::Value::Opaque
    };
    Ok(Doc::new(converted, origin))
}

/// A compiled RFC 9535 JSONPath query.
#[pyclass(frozen, module = "itonami._core")]
pub struct JsonPath {
    query: path::Query,
    singular: Option<Vec<PyStep>>,
    prefix: Vec<PyStep>,
}

impl JsonPath {
    fn matches<'py>(&self, context: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let Some(start) = walk(context.clone(), &self.prefix)? else {
            return Ok(Vec::new());
        };
        let mut seen = Vec::new();
        let doc = to_doc(&start, &mut seen, 0)?;
        let origins = self.query.select(&doc).map_err(PyValueError::new_err)?;
        Ok(origins
            .into_iter()
            .filter_map(|origin| seen.get(origin as usize).cloned())
            .collect())
    }
}

#[pymethods]
impl JsonPath {
    /// Compile `text`; a `ValueError` says why it is not a query.
    #[new]
    fn new(py: Python<'_>, text: &str) -> PyResult<Self> {
        let query = path::Query::compile(text).map_err(PyValueError::new_err)?;
        let singular = query.singular().map(|steps| py_steps(py, steps));
        let prefix = py_steps(py, query.prefix());
        Ok(JsonPath {
            query,
            singular,
            prefix,
        })
    }

    /// Whether the query is singular (selects at most one value).
    #[getter]
    fn singular(&self) -> bool {
        self.singular.is_some()
    }

    /// Every value the query selects in `context`, in the RFC's order.
    fn find_all<'py>(&self, context: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        match &self.singular {
            Some(steps) => Ok(walk(context.clone(), steps)?.into_iter().collect()),
            None => self.matches(context),
        }
    }

    /// The first value the query selects, or `None`.
    fn find_one<'py>(&self, context: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = context.py();
        let found = match &self.singular {
            Some(steps) => walk(context.clone(), steps)?,
            None => self.matches(context)?.into_iter().next(),
        };
        Ok(found.unwrap_or_else(|| py.None().into_bound(py)))
    }

    /// `find_one` for a singular query, `find_all` (a list) for any other.
    fn resolve<'py>(&self, context: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match &self.singular {
            Some(_) => self.find_one(context),
            None => Ok(PyList::new(context.py(), self.matches(context)?)?.into_any()),
        }
    }
}

fn cel_key(key: &Bound<'_, PyAny>) -> PyResult<Key> {
    if let Ok(s) = key.cast::<PyString>() {
        Ok(Key::String(Arc::new(s.to_str()?.to_owned())))
    } else if let Ok(b) = key.cast::<PyBool>() {
        Ok(Key::Bool(b.is_true()))
    } else if key.is_instance_of::<PyInt>() {
        match key.extract::<i64>() {
            Ok(i) => Ok(Key::Int(i)),
            Err(_) => key
                .extract::<u64>()
                .map(Key::Uint)
                .map_err(|_| PyValueError::new_err("an integer map key does not fit in 64 bits")),
        }
    } else {
        Err(PyValueError::new_err(format!(
            "a map key of type {} cannot be used in a condition",
            key.get_type().name()?
        )))
    }
}

/// `value` as a CEL value: an int that does not fit `int` becomes a `uint`,
/// then a `double`; a tuple is a list.
fn to_cel(value: &Bound<'_, PyAny>, depth: usize) -> PyResult<cond::Value> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    Ok(if value.is_none() {
        cond::Value::Null
    } else if let Ok(b) = value.cast::<PyBool>() {
        cond::Value::Bool(b.is_true())
    } else if let Ok(s) = value.cast::<PyString>() {
        cond::Value::String(Arc::new(s.to_str()?.to_owned()))
    } else if value.is_instance_of::<PyInt>() {
        if let Ok(i) = value.extract::<i64>() {
            cond::Value::Int(i)
        } else if let Ok(u) = value.extract::<u64>() {
            cond::Value::UInt(u)
        } else {
            cond::Value::Float(value.extract::<f64>()?)
        }
    } else if let Ok(f) = value.cast::<PyFloat>() {
        cond::Value::Float(f.value())
    } else if let Ok(dict) = value.cast::<PyDict>() {
        let mut map = HashMap::with_capacity(dict.len());
        for (key, item) in dict.iter() {
            map.insert(cel_key(&key)?, to_cel(&item, depth + 1)?);
        }
        cond::Value::Map(Map { map: Arc::new(map) })
    } else if let Ok(list) = value.cast::<PyList>() {
        let items: PyResult<Vec<_>> = list.iter().map(|v| to_cel(&v, depth + 1)).collect();
        cond::Value::List(Arc::new(items?))
    } else if let Ok(tuple) = value.cast::<PyTuple>() {
        let items: PyResult<Vec<_>> = tuple.iter().map(|v| to_cel(&v, depth + 1)).collect();
        cond::Value::List(Arc::new(items?))
    } else if let Ok(bytes) = value.cast::<PyBytes>() {
        cond::Value::Bytes(Arc::new(bytes.as_bytes().to_vec()))
    } else {
        return Err(PyValueError::new_err(format!(
            "a value of type {} cannot be used in a condition",
            value.get_type().name()?
        )));
    })
}

/// A CEL result as a Python value (only a non-boolean result is ever asked for).
fn from_cel<'py>(py: Python<'py>, value: &cond::Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        cond::Value::Null => py.None().into_bound(py),
        cond::Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        cond::Value::Int(i) => i.into_pyobject(py)?.into_any(),
        cond::Value::UInt(u) => u.into_pyobject(py)?.into_any(),
        cond::Value::Float(f) => PyFloat::new(py, *f).into_any(),
        cond::Value::String(s) => PyString::new(py, s).into_any(),
        cond::Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        cond::Value::List(items) => {
            let items: PyResult<Vec<_>> = items.iter().map(|v| from_cel(py, v)).collect();
            PyList::new(py, items?)?.into_any()
        }
        cond::Value::Map(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map.map.iter() {
                let key = match key {
                    Key::Int(i) => i.into_pyobject(py)?.into_any(),
                    Key::Uint(u) => u.into_pyobject(py)?.into_any(),
                    Key::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
                    Key::String(s) => PyString::new(py, s).into_any(),
                };
                dict.set_item(key, from_cel(py, item)?)?;
            }
            dict.into_any()
        }
        cond::Value::Timestamp(t) => {
            let datetime = py.import("datetime")?.getattr("datetime")?;
            datetime.call_method1("fromisoformat", (t.to_rfc3339(),))?
        }
        cond::Value::Duration(d) => {
            let timedelta = py.import("datetime")?.getattr("timedelta")?;
            let micros = d.num_microseconds().unwrap_or(i64::MAX);
            timedelta.call1((0, 0, micros))?
        }
        other => PyString::new(py, &format!("{other:?}")).into_any(),
    })
}

/// A compiled CEL condition.
#[pyclass(frozen, module = "itonami._core")]
pub struct Condition {
    condition: cond::Condition,
    names: Vec<Py<PyString>>,
}

#[pymethods]
impl Condition {
    /// Compile `text`; a `ValueError` carries the parser's message.
    #[new]
    fn new(py: Python<'_>, text: &str) -> PyResult<Self> {
        let condition = cond::Condition::compile(text).map_err(PyValueError::new_err)?;
        let names = condition
            .variables()
            .iter()
            .map(|name| PyString::new(py, name).unbind())
            .collect();
        Ok(Condition { condition, names })
    }

    /// The identifiers the expression references, sorted.
    #[getter]
    fn variables(&self) -> Vec<String> {
        self.condition.variables().to_vec()
    }

    /// The result over `context` (its top-level keys are the variables); a
    /// `ValueError` says why it could not be evaluated.
    fn evaluate<'py>(&self, context: &Bound<'py, PyDict>) -> PyResult<Bound<'py, PyAny>> {
        let py = context.py();
        let mut bindings = Vec::with_capacity(self.names.len());
        for (name, key) in self.condition.variables().iter().zip(&self.names) {
            if let Some(value) = context.get_item(key.bind(py))? {
                bindings.push((name.clone(), to_cel(&value, 0)?));
            }
        }
        match self.condition.evaluate(bindings) {
            Ok(cond::Value::Bool(b)) => Ok(PyBool::new(py, b).to_owned().into_any()),
            Ok(other) => from_cel(py, &other),
            Err(message) => Err(PyValueError::new_err(message)),
        }
    }
}
