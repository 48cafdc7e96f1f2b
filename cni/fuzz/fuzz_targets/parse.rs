//! Fuzzes the CNI plugins' parse entry point (environment + network configuration) and a whole
//! execution over the recording doubles, checking the same invariants as the stable property
//! tests `cni/tests/parse_properties.rs` and `cni/tests/rejections.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let input = k8slan_cni::fuzzing::decode(data);
    k8slan_cni::fuzzing::check(&input);
    k8slan_cni::fuzzing::check_plugin(&input);
});
