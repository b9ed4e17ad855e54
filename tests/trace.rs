//! XPU_OPS_TRACE: every op call becomes one Chrome trace event.

use xpu_ops::{TensorView, TensorViewMut};

#[test]
fn op_calls_are_written_as_trace_events() {
    let path = std::env::temp_dir().join(format!("xpu_ops_trace_{}.json", std::process::id()));
    xpu_ops::trace::set_trace_file(Some(&path)).unwrap();
    let key = vec![1.0f32; 2 * 4];
    let mut cache = vec![0f32; 4 * 2 * 4];
    for _ in 0..3 {
        xpu_ops::reshape_and_cache_flash(
            &TensorView::new(&key, &[1, 2, 4]).unwrap(),
            &TensorView::new(&key, &[1, 2, 4]).unwrap(),
            &mut TensorViewMut::new(&mut cache, &[4, 1, 2, 4]).unwrap(),
            None,
            &TensorView::new(&[2i64], &[1]).unwrap(),
            "auto",
            None,
            None,
        )
        .unwrap();
    }
    xpu_ops::trace::set_trace_file(None).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"ph\":\"X\""))
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    assert!(events[0].contains("\"name\":\"reshape_and_cache_flash\""));
    assert!(events[0].contains("\"key\":\"float32[1, 2, 4]\""));
    assert!(events[0].contains("\"threads\":"));
    // Stopping the trace closed the JSON array: "[", three events joined by ",", "]".
    assert!(
        text.starts_with("[\n") && text.ends_with("}\n]\n"),
        "{text}"
    );
    assert_eq!(text.matches("},\n{").count(), 2, "{text}");
}
