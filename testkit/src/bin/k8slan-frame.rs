//! `k8slan-frame`: send and receive raw Ethernet frames on an interface or a macvtap device.
//! Dependency-light (no argument-parsing crate) so that it builds as a small static binary for
//! the e2e test image.
//!
//! ```text
//! k8slan-frame send     --iface IF --dst MAC --src MAC --ethertype HEX [--payload TEXT] [--count N]
//! k8slan-frame recv     --iface IF [--ethertype HEX] [--src MAC] [--timeout SECS]
//! k8slan-frame echo     --iface IF [--ethertype HEX] [--src MAC] [--timeout SECS] [--reply-src MAC]
//! k8slan-frame tap-send --dev PATH --dst MAC --src MAC --ethertype HEX [--payload TEXT] [--count N]
//! k8slan-frame tap-recv --dev PATH [--ethertype HEX] [--src MAC] [--timeout SECS]
//! k8slan-frame tap-echo --dev PATH [--ethertype HEX] [--src MAC] [--timeout SECS] [--reply-src MAC]
//! ```
//! `recv` prints the matching frame as one JSON line and exits 1 on timeout; `echo` answers the
//! first matching frame back to its sender, from the interface's MAC (or `--reply-src`), with
//! payload `echo:<payload>`, then prints the frame it answered.

use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use k8slan_testkit::frame::{Filter, Frame, Mac, PacketSocket, TapDevice, parse_ethertype};

const USAGE: &str =
    "usage: k8slan-frame send|recv|echo --iface IF ... | tap-send|tap-recv|tap-echo --dev PATH ...
  send/tap-send: --dst MAC --src MAC --ethertype HEX [--payload TEXT] [--count N]
  recv/echo/tap-recv/tap-echo: [--ethertype HEX] [--src MAC] [--timeout SECS (default 5)]
  echo/tap-echo: [--reply-src MAC]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("k8slan-frame: timed out: no matching frame");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("k8slan-frame: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn options(args: &[String]) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let key = k
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {k:?}"))?;
        let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
        map.insert(key.to_string(), v.clone());
    }
    Ok(map)
}

fn need<'a>(o: &'a HashMap<String, String>, k: &str) -> Result<&'a str, String> {
    o.get(k)
        .map(String::as_str)
        .ok_or_else(|| format!("--{k} is required"))
}

fn frame_of(o: &HashMap<String, String>) -> Result<(Frame, u32), String> {
    let f = Frame {
        dst: need(o, "dst")?
            .parse::<Mac>()
            .map_err(|e| format!("--dst: {e}"))?,
        src: need(o, "src")?
            .parse::<Mac>()
            .map_err(|e| format!("--src: {e}"))?,
        ethertype: parse_ethertype(need(o, "ethertype")?)
            .map_err(|e| format!("--ethertype: {e}"))?,
        payload: o.get("payload").cloned().unwrap_or_default().into_bytes(),
    };
    let count = match o.get("count") {
        Some(c) => c
            .parse()
            .map_err(|_| format!("--count: {c:?} is not a number"))?,
        None => 1,
    };
    Ok((f, count))
}

fn filter_of(o: &HashMap<String, String>) -> Result<(Filter, Duration), String> {
    let ethertype = o
        .get("ethertype")
        .map(|e| parse_ethertype(e).map_err(|e| format!("--ethertype: {e}")))
        .transpose()?;
    let src = o
        .get("src")
        .map(|s| s.parse::<Mac>().map_err(|e| format!("--src: {e}")))
        .transpose()?;
    let secs: f64 = match o.get("timeout") {
        Some(t) => t
            .parse()
            .map_err(|_| format!("--timeout: {t:?} is not a number of seconds"))?,
        None => 5.0,
    };
    Ok((Filter { ethertype, src }, Duration::from_secs_f64(secs)))
}

fn run(args: &[String]) -> Result<bool, String> {
    let (cmd, rest) = args.split_first().ok_or("no command")?;
    let o = options(rest)?;
    let io = |e: std::io::Error| e.to_string();
    match cmd.as_str() {
        "send" => {
            let (f, n) = frame_of(&o)?;
            let s = PacketSocket::open(need(&o, "iface")?).map_err(io)?;
            for _ in 0..n {
                s.send(&f).map_err(io)?;
            }
            Ok(true)
        }
        "recv" | "echo" => {
            let (filt, t) = filter_of(&o)?;
            let s = PacketSocket::open(need(&o, "iface")?).map_err(io)?;
            s.promiscuous().map_err(io)?;
            let Some(f) = s.recv(&filt, t).map_err(io)? else {
                return Ok(false);
            };
            if cmd == "echo" {
                let me = match o.get("reply-src") {
                    Some(m) => m.parse().map_err(|e| format!("--reply-src: {e}"))?,
                    None => s.mac().map_err(io)?,
                };
                s.send(&f.echo(Some(me))).map_err(io)?;
            }
            println!("{}", f.to_json());
            Ok(true)
        }
        "tap-send" => {
            let (f, n) = frame_of(&o)?;
            let mut d = TapDevice::open(Path::new(need(&o, "dev")?)).map_err(io)?;
            for _ in 0..n {
                d.send(&f).map_err(io)?;
            }
            Ok(true)
        }
        "tap-recv" | "tap-echo" => {
            let (filt, t) = filter_of(&o)?;
            let mut d = TapDevice::open(Path::new(need(&o, "dev")?)).map_err(io)?;
            let Some(f) = d.recv(&filt, t).map_err(io)? else {
                return Ok(false);
            };
            if cmd == "tap-echo" {
                let me: Mac = match o.get("reply-src") {
                    Some(m) => m.parse().map_err(|e| format!("--reply-src: {e}"))?,
                    None => "02:00:00:00:00:fe".parse()?,
                };
                d.send(&f.echo(Some(me))).map_err(io)?;
            }
            println!("{}", f.to_json());
            Ok(true)
        }
        other => Err(format!("unknown command {other:?}")),
    }
}
