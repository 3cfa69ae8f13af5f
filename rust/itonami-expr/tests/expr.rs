//! The compiled expressions on their own: what a query selects (by origin)
//! and what a condition gives.

use indexmap::IndexMap;
use itonami_expr::cond::{Condition, Value as Cel};
use itonami_expr::path::{Doc, Query, Step, Value};

/// Builds a tree numbering its nodes in pre-order, as the binding does.
struct Builder(u32);

impl Builder {
    fn node(&mut self, value: Value) -> Doc {
        let doc = Doc::new(value, self.0);
        self.0 += 1;
        doc
    }
}

/// `{"a": [{"x": 1}, {"x": 2.5}, {"y": "s"}], "b": {"z": 1, "c": {"x": 3}}}`
/// numbered 0: root, 1: a, 2: a[0], 3: a[0].x, 4: a[1], 5: a[1].x, 6: a[2],
/// 7: a[2].y, 8: b, 9: b.z, 10: b.c, 11: b.c.x.
fn sample() -> Doc {
    let mut b = Builder(0);
    let root_origin = b.node(Value::Null).origin;
    let a_origin = b.node(Value::Null).origin;
    let mut items = Vec::new();
    for (key, value) in [
        ("x", Value::Int(1)),
        ("x", Value::Float(2.5)),
        ("y", Value::Str("s".into())),
    ] {
        let origin = b.node(Value::Null).origin;
        let leaf = b.node(value);
        items.push(Doc::new(
            Value::Object(IndexMap::from([(key.to_owned(), leaf)])),
            origin,
        ));
    }
    let a = Doc::new(Value::Array(items), a_origin);
    let b_origin = b.node(Value::Null).origin;
    let z = b.node(Value::Int(1));
    let c_origin = b.node(Value::Null).origin;
    let cx = b.node(Value::Int(3));
    let c = Doc::new(
        Value::Object(IndexMap::from([("x".to_owned(), cx)])),
        c_origin,
    );
    let bb = Doc::new(
        Value::Object(IndexMap::from([("z".to_owned(), z), ("c".to_owned(), c)])),
        b_origin,
    );
    Doc::new(
        Value::Object(IndexMap::from([("a".to_owned(), a), ("b".to_owned(), bb)])),
        root_origin,
    )
}

fn select(text: &str) -> Vec<u32> {
    let query = Query::compile(text).expect("compiles");
    assert!(query.prefix().is_empty() || query.singular().is_none());
    // Run from the root: these queries are compiled with their prefix removed,
    // so walk it here the way the binding does.
    let mut doc = sample();
    for step in query.prefix() {
        let Step::Name(name) = step else {
            panic!("index prefix in this test")
        };
        let Value::Object(members) = doc.value else {
            return vec![];
        };
        match members.get(name) {
            Some(next) => doc = next.clone(),
            None => return vec![],
        }
    }
    query.select(&doc).expect("runs")
}

#[test]
fn singular_queries_are_their_steps() {
    let q = Query::compile("$.a[0]['x y'][-1]").unwrap();
    assert_eq!(
        q.singular(),
        Some(
            &[
                Step::Name("a".into()),
                Step::Index(0),
                Step::Name("x y".into()),
                Step::Index(-1)
            ][..]
        )
    );
    assert_eq!(Query::compile("$").unwrap().singular(), Some(&[][..]));
    for text in [
        "$.a[*]",
        "$..x",
        "$.a[0:1]",
        "$.a[0,1]",
        "$['a','b']",
        "$.a[?@.x]",
    ] {
        assert!(Query::compile(text).unwrap().singular().is_none(), "{text}");
    }
}

#[test]
fn selections_keep_document_and_selector_order() {
    assert_eq!(select("$.a[*].x"), vec![3, 5]);
    assert_eq!(select("$.b.*"), vec![9, 10]);
    assert_eq!(select("$['b','a']"), vec![8, 1]);
    assert_eq!(select("$.a[::-1]"), vec![6, 4, 2]);
    assert_eq!(select("$.a[1:]"), vec![4, 6]);
    assert_eq!(select("$..x"), vec![3, 5, 11]);
}

#[test]
fn filters_compare_numbers_by_value() {
    assert_eq!(select("$.a[?@.x > 1]"), vec![4]);
    assert_eq!(select("$.a[?@.x == 1.0]"), vec![2]);
    assert_eq!(select("$.a[?@.y == 's']"), vec![6]);
    assert_eq!(select("$.a[?length(@.y) == 1]"), vec![6]);
    // A filter reading the root keeps the whole document.
    let q = Query::compile("$.a[?@.x == $.b.z]").unwrap();
    assert!(q.prefix().is_empty());
    assert_eq!(q.select(&sample()).unwrap(), vec![2]);
}

#[test]
fn invalid_and_non_rfc_queries_are_refused() {
    for text in [
        "inputs.x",
        "$[",
        "$.a[?in(@.x, [1])]",
        "$.a[?none_of(@, 1)]",
        "$.a b",
    ] {
        assert!(Query::compile(text).is_err(), "{text}");
    }
    assert_eq!(
        Query::compile("$[").unwrap_err(),
        "at column 3: expected selector"
    );
    assert_eq!(
        Query::compile("$.a b").unwrap_err(),
        "at column 4: blank space not allowed here"
    );
}

#[test]
fn conditions_reference_and_evaluate() {
    let c = Condition::compile("b.x > 1 && a.exists(i, i == 2)").unwrap();
    assert_eq!(c.variables(), ["a", "b", "i"]);
    let b = Cel::Map(std::collections::HashMap::from([("x".to_owned(), Cel::Int(2))]).into());
    let a = Cel::List(vec![Cel::Int(1), Cel::Int(2)].into());
    assert_eq!(
        c.evaluate(vec![("a".into(), a), ("b".into(), b)]),
        Ok(Cel::Bool(true))
    );
}

#[test]
fn condition_errors_are_messages() {
    let missing = Condition::compile("b.y").unwrap();
    let b = Cel::Map(std::collections::HashMap::from([("x".to_owned(), Cel::Int(2))]).into());
    assert_eq!(
        missing.evaluate(vec![("b".into(), b)]),
        Err("missing key 'y'".to_owned())
    );
    assert!(Condition::compile("1 / 0 > 1")
        .unwrap()
        .evaluate(vec![])
        .is_err());
    assert!(Condition::compile("undefined > 1")
        .unwrap()
        .evaluate(vec![])
        .is_err());
    assert!(Condition::compile("a >").is_err());
    let deep = format!("{}1{}", "(".repeat(500), ")".repeat(500));
    assert!(Condition::compile(&deep).is_err());
    assert!(Condition::compile(&"1 + ".repeat(20_000)).is_err());
}

/// Deep syntax trees that once overflowed the stack (an abort of the whole
/// process): long chains are refused by the operator bound, and the deepest
/// accepted ones compile and evaluate even on a thread with a small stack.
#[test]
fn deep_expressions_never_overflow_the_stack() {
    let long_sum = format!("{}1 > 0", "1 + ".repeat(4_000));
    let err = Condition::compile(&long_sum).unwrap_err();
    assert!(err.contains("at most 500 operators"), "{err}");
    let long_select = format!("{}b", "a.".repeat(20_000));
    assert!(Condition::compile(&long_select).is_err());
    let long_index = format!("${}", "[0]".repeat(1_000));
    assert!(Query::compile(&long_index).is_err());
    let small_stack = std::thread::Builder::new().stack_size(256 * 1024);
    let worker = small_stack
        .spawn(|| {
            let sum = Condition::compile(&format!("{}1 > 0", "1 + ".repeat(240))).unwrap();
            assert_eq!(sum.evaluate(vec![]), Ok(Cel::Bool(true)));
            let index = Condition::compile(&format!("a{} > 0", "[0]".repeat(160))).unwrap();
            assert!(index.evaluate(vec![]).is_err());
            let query = Query::compile(&format!("${}", "[0]".repeat(240))).unwrap();
            assert!(query.singular().is_some());
        })
        .unwrap();
    worker.join().unwrap();
}

#[test]
fn blanks_the_rfc_allows_are_kept() {
    for text in [
        "$ .a",
        "$[ 0 ]",
        "$[ 'a' , 'b' ]",
        "$.a[?@.x == 1 ]",
        "$[?@.a== 'x y']",
        "$.a\t.b",
    ] {
        assert!(Query::compile(text).is_ok(), "{text}");
    }
    assert_eq!(
        Query::compile("$['a b']").unwrap().singular(),
        Some(&[Step::Name("a b".into())][..])
    );
}
