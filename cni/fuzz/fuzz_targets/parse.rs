//! Fuzzes the CNI plugins' parse entry point (environment + network configuration), checking
//! the same invariants as the stable property test `cni/tests/parse_properties.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    k8slan_cni::fuzzing::check(&k8slan_cni::fuzzing::decode(data));
});
