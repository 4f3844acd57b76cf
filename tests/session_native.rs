//! The `native` session kind: ok, error, panic, unknown tool, timeout, an answer too deep to
//! read back.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tetrarch::session::{NativeRegistry, NativeSession, Session, SessionError, ToolRequest};

fn session() -> NativeSession {
    let mut registry = NativeRegistry::new();
    registry.register("double", |args: Value| async move {
        let n = args["n"].as_i64().ok_or("n must be an integer")?;
        Ok(json!({ "doubled": n * 2 }))
    });
    registry.register("explode", |_args: Value| async move {
        if true {
            panic!("boom");
        }
        Ok(Value::Null)
    });
    // Nests `depth` arrays around 1.
    registry.register("nest", |args: Value| async move {
        let depth = args["depth"].as_u64().ok_or("depth must be a count")?;
        let mut value = json!(1);
        for _ in 0..depth {
            value = json!([value]);
        }
        Ok(value)
    });
    registry.register("stall", |_args: Value| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(Value::Null)
    });
    // Answers (or fails with) a string of `bytes` bytes of "é" (two bytes each).
    registry.register("big", |args: Value| async move {
        let bytes = args["bytes"].as_u64().ok_or("bytes must be a count")?;
        let text = "é".repeat(usize::try_from(bytes / 2).unwrap());
        if args["fail"] == json!(true) {
            Err(text)
        } else {
            Ok(json!(text))
        }
    });
    assert_eq!(
        registry.names(),
        ["big", "double", "explode", "nest", "stall"]
    );
    NativeSession::new(Arc::new(registry))
}

#[tokio::test]
async fn ok_value_is_json_and_stdout() {
    let outcome = session()
        .call(ToolRequest::new("double", json!({"n": 21})))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(0));
    assert_eq!(outcome.json, Some(json!({"doubled": 42})));
    assert_eq!(outcome.stdout, r#"{"doubled":42}"#);
}

/// An answer nested deeper than text can be read back (a resume reads saved outputs back) fails
/// its call, saying why; one at the limit is an answer like any other.
#[tokio::test]
async fn an_answer_too_deep_to_read_back_fails_its_call() {
    let limit = tetrarch::session::native::MAX_OUTPUT_DEPTH;
    let at_limit = session()
        .call(ToolRequest::new("nest", json!({ "depth": limit })))
        .await
        .unwrap();
    assert_eq!(at_limit.exit_status, Some(0));
    let read_back: Value = serde_json::from_str(&at_limit.stdout).unwrap();
    assert_eq!(Some(read_back), at_limit.json);
    let too_deep = session()
        .call(ToolRequest::new("nest", json!({ "depth": limit + 1 })))
        .await
        .unwrap();
    assert_eq!(too_deep.exit_status, Some(1));
    assert_eq!(too_deep.json, None);
    assert!(
        too_deep.stderr.contains(&format!("more than {limit} deep")),
        "{}",
        too_deep.stderr
    );
}

#[tokio::test]
async fn tool_error_is_a_failed_outcome() {
    let outcome = session()
        .call(ToolRequest::new("double", json!({"n": "x"})))
        .await
        .unwrap();
    assert_eq!(outcome.exit_status, Some(1));
    assert_eq!(outcome.stderr, "n must be an integer");
}

#[tokio::test]
async fn panic_is_caught_as_crash() {
    let err = session()
        .call(ToolRequest::new("explode", json!({})))
        .await
        .unwrap_err();
    match &err {
        SessionError::Crashed { tool, reason } => {
            assert_eq!(tool, "explode");
            assert!(reason.contains("boom"), "{reason}");
        }
        other => panic!("expected Crashed, got {other}"),
    }
    assert!(err.breaks_session());
}

#[tokio::test]
async fn unknown_tool_and_timeout() {
    let mut session = session();
    let err = session
        .call(ToolRequest::new("nope", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::UnknownTool { ref tool } if tool == "nope"));
    let err = session
        .call(ToolRequest::new("stall", json!({})).with_timeout(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert!(matches!(err, SessionError::Timeout { .. }), "{err}");
}

/// An answer or an error longer than a process's output cap is cut to it, on a character
/// boundary, and marked truncated; a cut answer is no longer the tool's value.
#[tokio::test]
async fn a_long_answer_is_cut_to_the_output_cap() {
    let cap = tetrarch::session::DEFAULT_MAX_OUTPUT_BYTES;
    let big =
        |bytes: usize, fail: bool| ToolRequest::new("big", json!({ "bytes": bytes, "fail": fail }));
    let fits = session().call(big(cap - 10, false)).await.unwrap();
    assert!(!fits.truncated);
    assert!(fits.json.is_some());
    let long = session().call(big(3 * cap, false)).await.unwrap();
    assert!(long.truncated);
    assert_eq!(long.exit_status, Some(0));
    assert_eq!(long.json, None);
    assert!(
        long.stdout.len() <= cap && long.stdout.len() > cap - 4,
        "{}",
        long.stdout.len()
    );
    assert!(long.stdout.starts_with("\"é"));
    let failed = session().call(big(3 * cap, true)).await.unwrap();
    assert!(failed.truncated);
    assert_eq!(failed.exit_status, Some(1));
    assert!(failed.stderr.len() <= cap && failed.stderr.len() > cap - 4);
    assert!(failed.stderr.chars().all(|c| c == 'é'));
}
