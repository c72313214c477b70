//! Checkpoint import/export against files written by PyTorch itself.
//!
//! The fixtures and their expected values (tests/fixtures/weights/expected.json) come from
//! tools/fixtures/make_weights_fixtures.py, run once with torch 2.11: the reference values
//! are what PyTorch loads, not what this crate computes.

use advent::weights::{self, StateDict};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/weights")
}

fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn kind_of(dtype: &str) -> Kind {
    match dtype {
        "float32" => Kind::Float,
        "float64" => Kind::Double,
        "float16" => Kind::Half,
        "bfloat16" => Kind::BFloat16,
        "int64" => Kind::Int64,
        "int32" => Kind::Int,
        "int16" => Kind::Int16,
        "int8" => Kind::Int8,
        "uint8" => Kind::Uint8,
        "bool" => Kind::Bool,
        other => panic!("dtype {other} in expected.json"),
    }
}

/// Checks one tensor against its entry of expected.json: dtype, shape and exact values.
fn check_tensor(name: &str, t: &Tensor, want: &Value) {
    let kind = kind_of(want["dtype"].as_str().unwrap());
    assert_eq!(t.kind(), kind, "{name}: dtype");
    let shape: Vec<i64> = want["shape"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(t.size(), shape, "{name}: shape");
    assert!(t.is_contiguous(), "{name}: not contiguous");
    assert_eq!(t.device(), tch::Device::Cpu, "{name}: device");
    let values = want["values"].as_array().unwrap();
    let flat = t.reshape([-1]);
    if matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16) {
        let got = Vec::<f64>::try_from(flat.to_kind(Kind::Double)).unwrap();
        let want: Vec<f64> = values.iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(got.len(), want.len(), "{name}: element count");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{name}[{i}]: {g} != {w}");
        }
    } else {
        let got = Vec::<i64>::try_from(flat.to_kind(Kind::Int64)).unwrap();
        let want: Vec<i64> = values.iter().map(|v| v.as_i64().unwrap()).collect();
        assert_eq!(got, want, "{name}: values");
    }
}

/// Checks a loaded state dict against the expectations of fixture `file`, names in order.
fn check_against(dict: &StateDict, file: &str) {
    let expected = expected();
    let want = &expected["files"][file];
    let names: Vec<&str> = want["names"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(!names.is_empty());
    assert_eq!(dict.names().collect::<Vec<_>>(), names, "{file}: names in file order");
    for (name, t) in dict.iter() {
        check_tensor(name, t, &want["tensors"][name]);
    }
}

fn load_fixture(file: &str) -> StateDict {
    weights::load(&fixture(file)).unwrap_or_else(|e| panic!("{file}: {e:#}"))
}

#[test]
fn zip_format_loads_exact_values_in_file_order() {
    check_against(&load_fixture("state_zip.pth"), "state_zip.pth");
}

#[test]
fn zip_format_with_pickle_protocol_4() {
    check_against(&load_fixture("state_zip_p4.pth"), "state_zip_p4.pth");
}

#[test]
fn legacy_format_loads_exact_values_in_file_order() {
    check_against(&load_fixture("state_legacy.pth"), "state_legacy.pth");
}

#[test]
fn legacy_format_with_pickle_protocol_4() {
    check_against(&load_fixture("state_legacy_p4.pth"), "state_legacy_p4.pth");
}

#[test]
fn nested_state_dict_with_metadata() {
    check_against(&load_fixture("nested_zip.pth"), "nested_zip.pth");
}

#[test]
fn old_rebuild_tensor_storage_views_and_parameters() {
    check_against(&load_fixture("old_rebuild_legacy.pth"), "old_rebuild_legacy.pth");
}

#[test]
fn views_sharing_a_storage_are_independent_copies() {
    let dict = load_fixture("state_zip.pth");
    let first = dict.get("layer4.1.first").unwrap();
    let second = dict.get("layer4.1.second").unwrap();
    assert_ne!(first.data_ptr(), second.data_ptr());
    assert_eq!(first.size(), [4]);
    assert_eq!(second.size(), [2, 3]);
}

// --- the writer --------------------------------------------------------------------------

#[test]
fn pth_writer_round_trips_through_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let source = load_fixture("state_zip.pth");
    for name in ["out.pth", "out.pt"] {
        let path = dir.path().join(name);
        weights::save(&source, &path).unwrap();
        check_against(&weights::load(&path).unwrap(), "state_zip.pth");
        // The writer's layout: one folder, stored entries, data 64-byte aligned.
        let bytes = std::fs::read(&path).unwrap();
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
        let names: Vec<String> = zip.file_names().map(|n| n.unwrap().to_string()).collect();
        assert_eq!(names[0], "archive/data.pkl");
        assert_eq!(names[1], "archive/byteorder");
        assert_eq!(names.last().unwrap(), "archive/version");
        assert_eq!(names.len(), source.len() + 3);
        for i in 0..zip.len() {
            let entry = zip.by_index(i).unwrap();
            assert_eq!(entry.compression(), zip::CompressionMethod::Stored);
            if entry.name().unwrap().starts_with("archive/data/") {
                assert_eq!(entry.data_start().unwrap() % 64, 0, "{:?}", entry.name());
            }
        }
        let mut version = String::new();
        zip.by_name("archive/version").unwrap().read_to_string(&mut version).unwrap();
        assert_eq!(version, "3\n");
    }
    // Atomic: nothing but the two outputs in the folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn safetensors_writer_round_trips_through_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    let source = load_fixture("state_zip.pth");
    weights::save(&source, &path).unwrap();
    let back = weights::load(&path).unwrap();
    // Safetensors keeps no order of its own: same names, same values.
    let mut names: Vec<&str> = back.names().collect();
    names.sort();
    let mut want: Vec<&str> = source.names().collect();
    want.sort();
    assert_eq!(names, want);
    let expected = expected();
    for (name, t) in back.iter() {
        check_tensor(name, t, &expected["files"]["state_zip.pth"]["tensors"][name]);
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn writer_takes_views_and_variables() {
    let dir = tempfile::tempdir().unwrap();
    let mut dict = StateDict::new();
    let base = Tensor::arange(12, (Kind::Float, tch::Device::Cpu)).view([3, 4]);
    dict.insert("t", base.tr());
    dict.insert("slice", base.narrow(1, 1, 2));
    dict.insert("grad", Tensor::ones([2], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true));
    dict.insert("big", Tensor::from_slice(&[i64::MIN, i64::MAX, 1 << 40]));
    dict.insert("scalar", Tensor::from(2.5f64));
    for file in ["v.pth", "v.safetensors"] {
        let path = dir.path().join(file);
        weights::save(&dict, &path).unwrap();
        let back = weights::load(&path).unwrap();
        assert_eq!(back.len(), dict.len());
        for (name, t) in dict.iter() {
            let b = back.get(name).unwrap();
            assert_eq!(b.size(), t.size(), "{file} {name}");
            assert_eq!(b.kind(), t.kind(), "{file} {name}");
            assert!(b.equal(&t.detach()), "{file} {name}");
        }
    }
}

#[test]
fn unknown_extension_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.bin");
    let err = weights::save(&StateDict::new(), &path).unwrap_err();
    assert!(format!("{err:#}").contains("x.bin"), "{err:#}");
    assert!(!path.exists());
}

// --- bad input ---------------------------------------------------------------------------

/// Loads `bytes` from a file in a temporary folder and returns the error message, which
/// must name the file.
fn load_error(bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad-input.pth");
    std::fs::write(&path, bytes).unwrap();
    let err = weights::load(&path).err().unwrap_or_else(|| panic!("loaded {} bytes", bytes.len()));
    let message = format!("{err:#}");
    eprintln!("{} bytes: {message}", bytes.len());
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(!message.contains('\n'), "one line: {message}");
    message
}

#[test]
fn truncated_zip_is_an_error_naming_the_file() {
    let bytes = std::fs::read(fixture("state_zip.pth")).unwrap();
    let message = load_error(&bytes[..bytes.len() / 2]);
    assert!(message.contains("truncated"), "{message}");
    for cut in (4..bytes.len()).step_by(53).chain([bytes.len() - 1]) {
        let message = load_error(&bytes[..cut]);
        assert!(message.contains("truncated") || message.contains("corrupt"), "{cut}: {message}");
    }
}

#[test]
fn truncated_legacy_is_an_error_naming_the_file() {
    for file in ["state_legacy.pth", "state_legacy_p4.pth", "old_rebuild_legacy.pth"] {
        let bytes = std::fs::read(fixture(file)).unwrap();
        let message = load_error(&bytes[..bytes.len() / 2]);
        assert!(message.contains("truncated"), "{message}");
        for cut in (1..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            let message = load_error(&bytes[..cut]);
            assert!(message.contains("truncated"), "{file} cut at {cut}: {message}");
        }
    }
}

#[test]
fn empty_random_and_text_files_are_errors_naming_the_file() {
    assert!(load_error(b"").contains("empty"));
    let message = load_error(b"This is a text file, not a checkpoint.\n");
    assert!(message.contains("not a PyTorch or safetensors checkpoint"), "{message}");
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for prefix in [&b""[..], &[0x80, 2], b"PK\x03\x04", &[0x80, 2, 0x8a, 0x0a]] {
        for len in [1, 10, 300, 5000] {
            let mut bytes = prefix.to_vec();
            bytes.extend((0..len).map(|_| next() as u8));
            load_error(&bytes);
        }
    }
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let err = weights::load(Path::new("/nonexistent/dir/w.pth")).unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/dir/w.pth"));
}

#[test]
fn big_endian_legacy_file_is_refused() {
    let mut bytes = std::fs::read(fixture("state_legacy.pth")).unwrap();
    let at = bytes.windows(13).position(|w| w == b"little_endian").unwrap();
    let flag = at + bytes[at..].iter().position(|&b| b == 0x88).unwrap();
    assert!(flag - at < 20, "NEWTRUE right after the key");
    bytes[flag] = 0x89;
    let message = load_error(&bytes);
    assert!(message.contains("big-endian"), "{message}");
}

/// Copies the zip fixture `file` with entries replaced (`Some`) or removed (`None`).
fn edited_zip(file: &str, edits: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let bytes = std::fs::read(fixture(file)).unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(&bytes[..])).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let name = entry.name().unwrap().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        let data = match edits.iter().find(|(n, _)| name.ends_with(n)) {
            Some((_, Some(new))) => new.to_vec(),
            Some((_, None)) => continue,
            None => data,
        };
        out.start_file(name, options).unwrap();
        out.write_all(&data).unwrap();
    }
    out.finish().unwrap().into_inner()
}

#[test]
fn big_endian_zip_file_is_refused() {
    let message = load_error(&edited_zip("state_zip.pth", &[("/byteorder", Some(b"big"))]));
    assert!(message.contains("big-endian"), "{message}");
    // Without a byteorder record (old files), little-endian is assumed.
    let bytes = edited_zip("state_zip.pth", &[("/byteorder", None)]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.pth");
    std::fs::write(&path, bytes).unwrap();
    check_against(&weights::load(&path).unwrap(), "state_zip.pth");
}

#[test]
fn short_storage_record_is_an_error() {
    let message = load_error(&edited_zip("state_zip.pth", &[("/data/0", Some(&[0u8; 8]))]));
    assert!(message.contains("layer1.0.conv1.weight"), "{message}");
    let message = load_error(&edited_zip("state_zip.pth", &[("/data/3", None)]));
    assert!(message.contains("data/3"), "{message}");
}

// --- hand-made pickles: malicious sizes, non-tensors -------------------------------------

/// A minimal pickle assembler for the cases PyTorch would not write.
struct Pk(Vec<u8>);

impl Pk {
    fn new() -> Self {
        Pk(vec![0x80, 2])
    }
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(b"c").op(format!("{module}\n{name}\n").as_bytes())
    }
    fn str(self, s: &str) -> Self {
        let len = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&len).op(s.as_bytes())
    }
    fn int(self, v: i64) -> Self {
        self.op(&[0x8a, 8]).op(&v.to_le_bytes())
    }
    fn ints(mut self, values: &[i64]) -> Self {
        self = self.op(b"(");
        for &v in values {
            self = self.int(v);
        }
        self.op(b"t")
    }
    /// `_rebuild_tensor_v2(('storage', torch.FloatStorage, '0', 'cpu', numel), ...)`.
    fn tensor(self, numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Self {
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .str("storage")
            .global("torch", "FloatStorage")
            .str("0")
            .str("cpu")
            .int(numel)
            .op(b"tQ")
            .int(offset)
            .ints(size)
            .ints(stride)
            .op(&[0x89])
            .op(b"}tR")
    }
}

/// A zip checkpoint whose `data.pkl` is `pickle` and whose storage "0" holds 6 floats.
fn zip_with_pickle(pickle: &[u8]) -> Vec<u8> {
    let floats: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in [("x/data.pkl", pickle), ("x/data/0", &floats), ("x/version", b"3\n")] {
        out.start_file(name, options).unwrap();
        out.write_all(data).unwrap();
    }
    out.finish().unwrap().into_inner()
}

fn one_tensor_dict(numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    Pk::new().op(b"}(").str("w").tensor(numel, offset, size, stride).op(b"u.").0
}

#[test]
fn hand_made_zip_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.pth");
    std::fs::write(&path, zip_with_pickle(&one_tensor_dict(6, 1, &[2, 2], &[1, 3]))).unwrap();
    let dict = weights::load(&path).unwrap();
    let w = Vec::<f32>::try_from(dict.get("w").unwrap().reshape([-1])).unwrap();
    assert_eq!(w, [1.0, 4.0, 2.0, 5.0]);
}

#[test]
fn malicious_sizes_offsets_and_strides_are_errors() {
    let cases: Vec<(i64, i64, Vec<i64>, Vec<i64>)> = vec![
        (6, 6, vec![1], vec![1]),              // offset past the end
        (6, 0, vec![7], vec![1]),              // more elements than stored
        (6, 0, vec![2, 3], vec![3, 2]),        // strides reach past the end
        (6, 0, vec![i64::MAX, 2], vec![1, 1]), // size overflow
        (6, 0, vec![3], vec![i64::MAX]),       // stride overflow
        (6, 0, vec![-1], vec![1]),             // negative size
        (6, 0, vec![2], vec![-1]),             // negative stride
        (6, -1, vec![2], vec![1]),             // negative offset
        (6, 0, vec![2, 2], vec![1]),           // rank mismatch
        (1 << 60, 0, vec![1 << 60], vec![1]),  // huge declared storage
        (6, 0, vec![1 << 40], vec![0]),        // huge expansion of one element
        (6, 0, vec![1; 65], vec![1; 65]),      // too many dimensions
    ];
    for (numel, offset, size, stride) in cases {
        let message = load_error(&zip_with_pickle(&one_tensor_dict(numel, offset, &size, &stride)));
        assert!(message.contains("\"w\""), "{size:?} {stride:?}: {message}");
    }
}

#[test]
fn non_tensor_entries_are_errors_naming_the_key() {
    let pickle = Pk::new().op(b"}(").str("w").tensor(6, 0, &[6], &[1]).str("b").int(3).op(b"u.").0;
    let message = load_error(&zip_with_pickle(&pickle));
    assert!(message.contains("\"b\"") && message.contains("not a tensor"), "{message}");
    // Known metadata is skipped.
    let pickle = Pk::new().op(b"}(").str("w").tensor(6, 0, &[6], &[1]).str("block._extra_state").int(3).op(b"u.").0;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.pth");
    std::fs::write(&path, zip_with_pickle(&pickle)).unwrap();
    assert_eq!(weights::load(&path).unwrap().names().collect::<Vec<_>>(), ["w"]);
}

#[test]
fn checkpoint_without_a_state_dict_lists_its_keys() {
    let pickle = Pk::new().op(b"}(").str("epoch").int(3).str("arch").str("deeplab").op(b"u.").0;
    let message = load_error(&zip_with_pickle(&pickle));
    assert!(message.contains("\"epoch\"") && message.contains("\"arch\""), "{message}");
    let message = load_error(&zip_with_pickle(&Pk::new().op(b"](").int(1).op(b"e.").0));
    assert!(message.contains("list"), "{message}");
}

#[test]
fn state_dict_under_model_state_dict_and_model() {
    for key in ["model_state_dict", "model"] {
        let pickle =
            Pk::new().op(b"}(").str("epoch").int(3).str(key).op(b"}(").str("w").tensor(6, 0, &[3], &[2]).op(b"uu.").0;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wrapped.pth");
        std::fs::write(&path, zip_with_pickle(&pickle)).unwrap();
        let dict = weights::load(&path).unwrap();
        let w = Vec::<f32>::try_from(dict.get("w").unwrap()).unwrap();
        assert_eq!(w, [0.0, 2.0, 4.0], "{key}");
    }
}

// --- PyTorch reads what we write -----------------------------------------------------------

/// Needs a Python with torch: `ADVENT_TORCH_PYTHON=/path/to/python cargo test --release -p
/// advent --test weights -- --ignored`.
#[test]
#[ignore = "needs ADVENT_TORCH_PYTHON, a python with torch"]
fn torch_loads_our_pth_with_weights_only() {
    let Ok(python) = std::env::var("ADVENT_TORCH_PYTHON") else {
        eprintln!("ADVENT_TORCH_PYTHON is not set: skipped");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("state_zip.pth");
    let mut dict = load_fixture("state_zip.pth");
    // A few tensors made here, which the script rebuilds in torch.
    dict.insert("extra.big", Tensor::from_slice(&[i64::MIN, i64::MAX, -1, 1 << 40]));
    let base = Tensor::arange(12, (Kind::Double, tch::Device::Cpu)).view([3, 4]) / 8.0;
    dict.insert("extra.transposed", base.tr());
    let ours = dir.path().join("ours.pth");
    weights::save(&dict, &ours).unwrap();
    let script = r#"
import sys, torch
ref = torch.load(sys.argv[1], weights_only=True)
ref["extra.big"] = torch.tensor([-2**63, 2**63 - 1, -1, 2**40], dtype=torch.int64)
ref["extra.transposed"] = (torch.arange(12, dtype=torch.float64).reshape(3, 4) / 8.0).t()
ours = torch.load(sys.argv[2], weights_only=True)
assert type(ours).__name__ == "OrderedDict", type(ours)
assert list(ours.keys()) == list(ref.keys()), (list(ours.keys()), list(ref.keys()))
for k, r in ref.items():
    o = ours[k]
    assert o.dtype == r.dtype, (k, o.dtype, r.dtype)
    assert o.shape == r.shape, (k, o.shape, r.shape)
    assert o.is_contiguous(), k
    assert not o.requires_grad, k
    assert torch.equal(o, r), k
print("torch", torch.__version__, "loaded", len(ours), "tensors, all equal")
"#;
    let output = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&source)
        .arg(&ours)
        .output()
        .expect("running ADVENT_TORCH_PYTHON");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "torch.load failed:\n{stdout}\n{stderr}");
    eprintln!("{stdout}");
}
