//! `advent::device::keep_freed_host_memory` (what the `advent` binary calls at start): large
//! blocks stop being mapped and unmapped one by one. Its own test binary, since the setting
//! is process-wide.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn large_blocks_come_from_the_heap_once_freed_memory_is_kept() {
    // Above glibc's largest mmap threshold (32 MiB), below the 64 MiB of a thread arena's
    // heap (the test runs on a thread of the harness).
    const BLOCK: usize = 40 << 20;
    let mapped = || unsafe { libc::mallinfo2() }.hblks;
    let touched = |n: usize| {
        let mut v = vec![0u8; n];
        v[n - 1] = 1;
        std::hint::black_box(v)
    };
    let before = touched(BLOCK);
    assert!(mapped() >= 1, "glibc's default: a 40 MiB block has its own mapping");
    drop(before);
    assert!(advent::device::keep_freed_host_memory(), "mallopt refused the settings");
    let base = mapped();
    let after = touched(BLOCK);
    assert_eq!(mapped(), base, "a 40 MiB block was still mapped on its own");
    drop(after);
    let again = touched(BLOCK);
    assert_eq!(mapped(), base);
    drop(again);
}

/// The user's own malloc settings win: glibc's tunables naming malloc, and glibc's
/// `MALLOC_*_` variables; other tunables and other allocators' variables do not count.
#[test]
fn the_environment_decides_first() {
    let configured = |vars: &[(&str, &str)]| {
        advent::device::malloc_configured_by(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    };
    assert!(configured(&[("PATH", "/bin"), ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")]));
    assert!(configured(&[("MALLOC_ARENA_MAX_", "2")]));
    assert!(configured(&[("MALLOC_MMAP_THRESHOLD_", "1048576")]));
    assert!(!configured(&[("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX2")]));
    assert!(!configured(&[("MALLOC_CONF", "background_thread:true")]), "jemalloc's variable");
    assert!(!configured(&[("PATH", "/bin"), ("HOME", "/root")]));
}
