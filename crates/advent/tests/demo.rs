//! A miniature `advent demo` (a few iterations): every method and the oracle train, are
//! evaluated, and results.json and report.html come out whole.

use advent::demo::{run_demo, DemoOptions, Schedule, DRAWN_CLASSES};
use tch::Device;

#[test]
fn miniature_demo_writes_results_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("old.txt"), "previous demo").unwrap();
    let options = DemoOptions {
        out: out.clone(),
        seeds: 2,
        quick: true,
        device: Device::Cpu,
        progress: advent::train::Progress::Hidden,
        schedule: Some(Schedule { pretrain: 6, adapt: 4, eval_every: 2, val_images: 3 }),
        overrides: vec!["synthetic.len=20".into()],
    };
    let lines = std::cell::RefCell::new(Vec::new());
    let results = run_demo(&options, &|l| lines.borrow_mut().push(l.to_string())).unwrap();
    assert_eq!(results.seeds, 2);
    let names: Vec<&str> = results.methods.keys().map(String::as_str).collect();
    assert_eq!(names, ["source_only", "target_bn", "minent", "advent", "advent_minent"]);
    for m in results.methods.values().chain(std::iter::once(&results.target_oracle)) {
        assert_eq!(m.miou_per_seed.len(), 2);
        assert!(m.miou >= 0.0 && m.miou <= 100.0 && m.miou_min <= m.miou && m.miou <= m.miou_max);
        assert_eq!(m.iou.len(), DRAWN_CLASSES.len());
        assert!((0.0..=1.0).contains(&m.mean_entropy));
    }
    // The previous demo was replaced only at the end, whole.
    assert!(!out.join("old.txt").exists());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert!(json["methods"]["advent"]["miou"].is_number() && json["target_oracle"]["miou"].is_number());
    assert_eq!(json["seeds"], 2);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<svg") && html.contains("data:image/png;base64,"));
    assert!(!html.contains("src=\"http"), "the report must open offline");
    for run in ["pretrain", "source_only", "target_bn", "minent", "advent", "advent_minent", "target_oracle"] {
        for seed in ["seed1", "seed2"] {
            assert!(out.join("runs").join(seed).join(run).join("metrics.jsonl").is_file(), "{seed} {run}");
        }
    }
    assert!(lines.borrow().iter().any(|l| l.contains("AdvEnt")));
    // No temporary folder is left beside the output.
    let leftovers: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().flatten().filter(|e| e.file_name() != "demo").collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
