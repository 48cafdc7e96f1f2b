//! Measuring: percentiles of samples, iperf3 between two namespaces.

use std::process::{Command, Stdio};
use std::time::Duration;

use k8slan_testkit::TestNs;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Prints `what: n= median= p99= max=` of the samples, in milliseconds.
pub fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: n={} median={:.3} ms p99={:.3} ms max={:.3} ms",
        samples.len(),
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
    );
}

/// The median of the samples.
pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    percentile(&samples, 0.5)
}

/// iperf3 from `client` to `server_addr` (served in `server`) for `secs`; Gbit/s received.
pub fn iperf(server: &TestNs, client: &TestNs, server_addr: &str, secs: u32) -> f64 {
    let mut srv = Command::new("ip")
        .args([
            "netns",
            "exec",
            server.name(),
            "iperf3",
            "-s",
            "-1",
            "-B",
            server_addr,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let out = client
        .sh(&format!("iperf3 -c {server_addr} -t {secs} -J"))
        .unwrap();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap()
        / 1e9
}
