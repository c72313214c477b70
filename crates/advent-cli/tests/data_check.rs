//! `advent data check` end to end (to go in crates/advent-cli/tests/ once `data` is wired
//! into main.rs).

use std::path::Path;
use std::process::{Command, Output};

fn advent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_advent")).args(args).output().expect("runs")
}

fn check(root: &Path, extra: &[&str]) -> (Output, String, String) {
    let mut args = vec!["data", "check", "--dataset", "gta5", "--root", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = advent(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

#[test]
fn data_check_reports_each_problem_and_fails_on_any() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("images")).unwrap();
    std::fs::create_dir_all(root.join("labels")).unwrap();
    let img = image::RgbImage::from_fn(8, 6, |x, y| image::Rgb([x as u8 * 9, y as u8 * 7, 3]));
    img.save(root.join("images/00001.png")).unwrap();
    img.save(root.join("images/00002.png")).unwrap();
    // Label ids: road (7) on the left half, car (26) on the right.
    let label = image::GrayImage::from_fn(8, 6, |x, _| image::Luma([if x < 4 { 7 } else { 26 }]));
    label.save(root.join("labels/00001.png")).unwrap();

    let json = root.join("report.json");
    let (out, stdout, stderr) = check(root, &["--json", json.to_str().unwrap()]);
    assert!(!out.status.success(), "{stdout}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: 1 problem(s)"), "{stderr}");
    assert!(stdout.contains(&root.join("labels/00002.png").display().to_string()), "{stdout}");
    assert!(stdout.contains("8x6 (2)"), "{stdout}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["class_pixels"][0]["name"], "road");
    assert_eq!(report["class_pixels"][0]["pixels"], 24);
    assert_eq!(report["class_pixels"][13]["pixels"], 24);
    assert_eq!(report["problems"][0]["kind"], "missing-label");

    std::fs::remove_file(root.join("images/00002.png")).unwrap();
    let (out, stdout, _) = check(root, &[]);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("no problems found"), "{stdout}");

    let (out, _, stderr) = check(&root.join("nowhere"), &[]);
    assert!(!out.status.success());
    assert!(stderr.starts_with("error: GTA5: no image folder"), "{stderr}");
}
