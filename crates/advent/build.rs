//! Compiles `csrc/native.cpp` (the libtorch calls tch does not bind) against the libtorch
//! that torch-sys links; with CUDA graphs when that libtorch has CUDA and the CUDA runtime's
//! headers are found (`ADVENT_CUDA_INCLUDE`, or pip's `nvidia/*/include` beside `torch`).

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=csrc/native.cpp");
    println!("cargo:rerun-if-env-changed=ADVENT_CUDA_INCLUDE");
    // torch-sys (`links = "tch"`) tells its dependents where libtorch's libraries are.
    let lib = PathBuf::from(env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB"));
    let root = lib.parent().expect("libtorch's lib folder has a parent").to_path_buf();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        .warnings(false)
        .std("c++17")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .define("_GLIBCXX_USE_CXX11_ABI", env::var("LIBTORCH_CXX11_ABI").as_deref().unwrap_or("1"))
        .define("GLOG_USE_GLOG_EXPORT", None);
    if lib.join("libtorch_cuda.so").exists() && lib.join("libc10_cuda.so").exists() {
        if let Some(dirs) = cuda_includes(&root) {
            build.define("ADVENT_CUDA_GRAPHS", None);
            build.include(&dirs[0]);
            for d in &dirs[1..] {
                build.flag("-idirafter").flag(d.to_str().expect("a UTF-8 path"));
            }
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
            println!("cargo:rustc-link-lib=dylib=torch_cuda");
        } else {
            println!("cargo:warning=CUDA runtime headers not found: advent is built without CUDA graphs");
        }
    }
    build.file("csrc/native.cpp").compile("advent_native");
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}

/// Folders with the CUDA runtime's headers: the first has `cuda_runtime_api.h`; when it lacks
/// the compiler-configuration headers under `crt/` (pip's `nvidia/cu13` wheel does), a
/// second folder that has them (Triton's bundled copy, which torch installs) is searched
/// after it. Only declarations and macros are used: no CUDA code is compiled.
fn cuda_includes(torch: &Path) -> Option<Vec<PathBuf>> {
    let site = torch.parent()?;
    let mut runtime: Vec<PathBuf> = Vec::new();
    if let Ok(dir) = env::var("ADVENT_CUDA_INCLUDE") {
        runtime.push(PathBuf::from(dir));
    }
    if let Ok(entries) = std::fs::read_dir(site.join("nvidia")) {
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("include")).collect();
        dirs.sort();
        runtime.extend(dirs);
    }
    if let Ok(home) = env::var("CUDA_HOME") {
        runtime.push(PathBuf::from(home).join("include"));
    }
    runtime.push(PathBuf::from("/usr/local/cuda/include"));
    let first = runtime.into_iter().find(|d| d.join("cuda_runtime_api.h").exists())?;
    if first.join("crt/host_config.h").exists() {
        return Some(vec![first]);
    }
    let crt = site.join("triton/backends/nvidia/include");
    crt.join("crt/host_config.h").exists().then(|| vec![first, crt])
}
