//! The `native` session kind: ok, error, panic, unknown tool, timeout.
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
    registry.register("stall", |_args: Value| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(Value::Null)
    });
    assert_eq!(registry.names(), ["double", "explode", "stall"]);
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
