//! `pg_array_*`: Python lists to PostgreSQL binary arrays
//! (`itonami_core::pgarray`), for the PostgreSQL storage's bulk statements.
//! Only the element conversion lives here.

use itonami_core::pgarray::{ArrayBuilder, ArrayError, Element};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyInt, PyList, PyString};

fn too_large(e: ArrayError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn wrong_type(function: &str, index: usize, item: &Bound<'_, PyAny>, wanted: &str) -> PyErr {
    let got = item
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into());
    PyTypeError::new_err(format!(
        "{function}: element {index} is {got}, not {wanted} or None"
    ))
}

/// Runs `push` over the list's elements (NULLs handled here).
fn build<'py, T, F>(
    values: &Bound<'py, PyList>,
    per_element: usize,
    mut push: F,
) -> PyResult<Bound<'py, PyBytes>>
where
    T: Element + ?Sized,
    F: FnMut(&mut ArrayBuilder<T>, usize, &Bound<'py, PyAny>) -> PyResult<()>,
{
    let mut builder = ArrayBuilder::<T>::with_capacity(values.len(), per_element);
    for (index, item) in values.iter().enumerate() {
        if item.is_none() {
            builder.push(None).map_err(too_large)?;
        } else {
            push(&mut builder, index, &item)?;
        }
    }
    Ok(PyBytes::new(values.py(), &builder.finish()))
}

/// `list[int | None]` as an `int8[]` (oid 1016) in binary.
#[pyfunction]
pub fn pg_array_int8<'py>(values: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyBytes>> {
    build::<i64, _>(values, 8, |b, index, item| {
        if item.is_instance_of::<PyBool>() || !item.is_instance_of::<PyInt>() {
            return Err(wrong_type("pg_array_int8", index, item, "int"));
        }
        let v = item.extract::<i64>().map_err(|_| {
            crate::make_err(
                item.py(),
                "InvalidArgumentError",
                format!("pg_array_int8: element {index} is outside -2**63..=2**63-1"),
                &[],
            )
        })?;
        b.push(Some(&v)).map_err(too_large)
    })
}

/// `list[str | None]` as a `text[]` (oid 1009) in binary.
#[pyfunction]
pub fn pg_array_text<'py>(values: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyBytes>> {
    build::<str, _>(values, 16, |b, index, item| {
        let s = item
            .cast::<PyString>()
            .map_err(|_| wrong_type("pg_array_text", index, item, "str"))?;
        b.push(Some(s.to_str()?)).map_err(too_large)
    })
}

/// `list[bytes | bytearray | None]` as a `bytea[]` (oid 1001) in binary.
#[pyfunction]
pub fn pg_array_bytea<'py>(values: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyBytes>> {
    build::<[u8], _>(values, 64, |b, index, item| {
        if let Ok(bytes) = item.cast::<PyBytes>() {
            b.push(Some(bytes.as_bytes())).map_err(too_large)
        } else if let Ok(array) = item.cast::<PyByteArray>() {
            b.push(Some(&array.to_vec())).map_err(too_large)
        } else {
            Err(wrong_type("pg_array_bytea", index, item, "bytes"))
        }
    })
}

/// `list[bool | None]` as a `bool[]` (oid 1000) in binary.
#[pyfunction]
pub fn pg_array_bool<'py>(values: &Bound<'py, PyList>) -> PyResult<Bound<'py, PyBytes>> {
    build::<bool, _>(values, 1, |b, index, item| {
        let v = item
            .cast::<PyBool>()
            .map_err(|_| wrong_type("pg_array_bool", index, item, "bool"))?;
        b.push(Some(&v.is_true())).map_err(too_large)
    })
}
