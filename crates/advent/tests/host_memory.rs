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

#[test]
fn the_environment_decides_first() {
    // Only reads the environment: the variables of this process are left as they are.
    let set = std::env::vars().any(|(k, v)| {
        (k == "GLIBC_TUNABLES" && v.contains("glibc.malloc.")) || (k.starts_with("MALLOC_") && k.ends_with('_'))
    });
    assert_eq!(advent::device::malloc_configured_by_environment(), set);
}
