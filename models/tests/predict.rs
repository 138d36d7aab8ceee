//! The local prediction entry point: table and JSON-lines output, per-input errors.

use std::path::PathBuf;

use idunno_models::predict;

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("idunno-models-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn json_lines_and_table_with_per_input_errors() {
    let dir = scratch_dir("predict");
    let testdata = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let bad = dir.join("notes.txt");
    std::fs::write(&bad, "not an image").expect("write");
    let files = vec![
        testdata.join("coffee.png"),
        bad.clone(),
        dir.join("missing.png"),
        testdata.join("chelsea.png"),
    ];

    let mut out = Vec::new();
    let summary = predict::run("efficientnet-lite0", &files, true, &mut out).expect("run");
    assert_eq!((summary.inputs, summary.failed), (4, 2));
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["class_id"], 967);
    assert_eq!(lines[0]["label"], "espresso");
    assert_eq!(lines[0]["top5"].as_array().map(Vec::len), Some(5));
    assert!(
        lines[0]["top5"][0]["probability"]
            .as_f64()
            .is_some_and(|p| p > 0.9)
    );
    assert_eq!(lines[0]["input"], files[0].display().to_string());
    assert!(
        lines[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("PNG or JPEG"))
    );
    assert!(lines[1].get("class_id").is_none());
    assert!(
        lines[2]["error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot read input"))
    );
    assert_eq!(lines[3]["class_id"], 282);

    let mut table = Vec::new();
    predict::run("efficientnet-lite0", &files, false, &mut table).expect("run");
    let table = String::from_utf8(table).expect("utf-8");
    eprintln!("{table}");
    assert_eq!(table.lines().count(), 5);
    assert!(table.contains("espresso") && table.contains("tiger cat") && table.contains("error:"));

    let err = predict::run("no-such-model", &files, true, &mut Vec::new()).expect_err("unknown");
    assert!(err.to_string().contains("known models"));
    let _ = std::fs::remove_dir_all(&dir);
}
