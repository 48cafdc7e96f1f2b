//! `k8slan-agent install-cni`: copies the CNI plugins into the host's CNI binary directory and
//! writes their node settings (`k8slan-cni.json`) beside them. The image has no shell, so the
//! init container runs this. Each file is written to a temporary name in the destination
//! directory and renamed over the old one, so a runtime calling the plugin at that moment sees
//! either the old or the new file, never half of one.
//!
//! `/opt/cni/bin/macvtap` is KubeVirt's macvtap-cni's name (and was ours before the VM plugin
//! became `k8slanmacvtap`): a file of that name is replaced only if it is a k8slan build (it
//! carries [`K8SLAN_BUILD_MARKER`]), with the current VM plugin, so that attachments made before
//! the rename can still be deleted; anything else there is never touched.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use k8slan_api::naming::{
    DEFAULT_DEV_DIR, LEGACY_MAC_CNI_TYPE, MAC_CNI_TYPE, RESOURCE_DOMAIN, VETH_CNI_TYPE,
};
use k8slan_api::prepared::{CNI_SETTINGS_FILE, CniNodeSettings, DEFAULT_PREPARED_DIR};
use k8slan_api::validate;

/// The plugins the image carries.
pub const PLUGINS: [&str; 2] = [VETH_CNI_TYPE, MAC_CNI_TYPE];
/// Bytes every k8slan CNI build contains (the resource domain its messages name) and that a
/// foreign plugin does not.
pub const K8SLAN_BUILD_MARKER: &str = RESOURCE_DOMAIN;
/// Largest file searched for the marker; a larger one is not ours.
const MAX_PLUGIN_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// Directory holding the plugins in the image.
    #[arg(long, env = "K8SLAN_CNI_SOURCE_DIR", default_value = "/opt/k8slan/cni")]
    pub source_dir: PathBuf,
    /// The host's CNI binary directory, as mounted in the container.
    #[arg(long, env = "K8SLAN_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub dest_dir: PathBuf,
    /// The plugins' log file on the host (absolute; opened without following symlinks, mode
    /// 0600). Empty: the plugins log to stderr only (the runtime's log).
    #[arg(
        long,
        env = "K8SLAN_CNI_LOG_FILE",
        default_value = "/var/log/k8slan-cni.log"
    )]
    pub cni_log_file: String,
    /// The plugins' log level.
    #[arg(long, env = "K8SLAN_CNI_LOG_LEVEL", default_value = "info",
          value_parser = ["trace", "debug", "info", "warn", "error"])]
    pub cni_log_level: String,
    /// The agent's --dev-dir on the host (tap device nodes of VM spokes).
    #[arg(long, env = "K8SLAN_DEV_DIR", default_value = DEFAULT_DEV_DIR)]
    pub dev_dir: PathBuf,
    /// The agent's --prepared-dir on the host (records of the spokes it prepared).
    #[arg(long, env = "K8SLAN_PREPARED_DIR", default_value = DEFAULT_PREPARED_DIR)]
    pub prepared_dir: PathBuf,
}

pub fn run(args: InstallCniArgs) -> Result<()> {
    let settings = settings(&args)?;
    for name in PLUGINS {
        let bytes = read_plugin(&args.source_dir.join(name))?;
        write_atomically(&args.dest_dir, name, &bytes, 0o755)?;
        eprintln!("installed {name} into {}", args.dest_dir.display());
    }
    write_atomically(
        &args.dest_dir,
        CNI_SETTINGS_FILE,
        settings.to_json().as_bytes(),
        0o644,
    )?;
    eprintln!("wrote {CNI_SETTINGS_FILE} into {}", args.dest_dir.display());
    replace_legacy_macvtap(&args)
}

/// The node settings the flags describe, every path checked.
fn settings(args: &InstallCniArgs) -> Result<CniNodeSettings> {
    let path = |flag: &str, p: &Path| -> Result<PathBuf> {
        let s = p
            .to_str()
            .with_context(|| format!("{flag}: {} is not UTF-8", p.display()))?;
        validate::normalized_absolute_path(flag, s)?;
        Ok(p.to_owned())
    };
    let log_file = match args.cni_log_file.as_str() {
        "" => None,
        f => Some(path("--cni-log-file", Path::new(f))?),
    };
    Ok(CniNodeSettings {
        log_file,
        log_level: Some(args.cni_log_level.clone()),
        dev_dir: path("--dev-dir", &args.dev_dir)?,
        prepared_dir: path("--prepared-dir", &args.prepared_dir)?,
    })
}

fn read_plugin(source: &Path) -> Result<Vec<u8>> {
    let bytes =
        fs::read(source).with_context(|| format!("cannot read CNI plugin {}", source.display()))?;
    if bytes.is_empty() {
        bail!("CNI plugin {} is empty", source.display());
    }
    Ok(bytes)
}

/// Writes `dir/name` through a fresh temporary file (never following a symlink planted under
/// the temporary name) renamed over it.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = dir.join(format!(".{name}.k8slan-tmp"));
    let write = || -> std::io::Result<()> {
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(name))
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::anyhow!("cannot install {name} into {}: {e}", dir.display())
    })
}

/// Whether `path` is a regular file that is a k8slan CNI build.
fn is_k8slan_build(path: &Path) -> Result<bool> {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return Ok(false);
    };
    if !meta.file_type().is_file() || meta.len() > MAX_PLUGIN_BYTES {
        return Ok(false);
    }
    let mut bytes = Vec::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| f.take(MAX_PLUGIN_BYTES).read_to_end(&mut bytes))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let marker = K8SLAN_BUILD_MARKER.as_bytes();
    Ok(bytes.windows(marker.len()).any(|w| w == marker))
}

/// An old k8slan `macvtap` is replaced by the current VM plugin (DEL of attachments made before
/// the rename still finds it); a foreign one (KubeVirt's macvtap-cni) is left byte for byte.
fn replace_legacy_macvtap(args: &InstallCniArgs) -> Result<()> {
    let legacy = args.dest_dir.join(LEGACY_MAC_CNI_TYPE);
    if !legacy.exists() && fs::symlink_metadata(&legacy).is_err() {
        return Ok(());
    }
    if !is_k8slan_build(&legacy)? {
        eprintln!(
            "left {} alone: it is not a k8slan build (e.g. KubeVirt's macvtap-cni)",
            legacy.display()
        );
        return Ok(());
    }
    let bytes = read_plugin(&args.source_dir.join(MAC_CNI_TYPE))?;
    write_atomically(&args.dest_dir, LEGACY_MAC_CNI_TYPE, &bytes, 0o755)?;
    eprintln!(
        "replaced the old k8slan {} by the current {MAC_CNI_TYPE}, for attachments made before the rename; delete it once no such pod remains",
        legacy.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(src: &Path, dst: &Path) -> InstallCniArgs {
        InstallCniArgs {
            source_dir: src.into(),
            dest_dir: dst.into(),
            cni_log_file: "/var/log/k8slan-cni.log".into(),
            cni_log_level: "debug".into(),
            dev_dir: "/run/k8slan/dev".into(),
            prepared_dir: "/run/k8slan/prepared".into(),
        }
    }

    fn sources() -> tempfile::TempDir {
        let src = tempfile::tempdir().unwrap();
        for name in PLUGINS {
            fs::write(
                src.path().join(name),
                format!("new {name} {K8SLAN_BUILD_MARKER}"),
            )
            .unwrap();
        }
        src
    }

    #[test]
    fn installs_both_plugins_executable_and_replaces_old_ones() {
        let src = sources();
        let dst = tempfile::tempdir().unwrap();
        fs::write(dst.path().join("k8slanveth"), "old").unwrap();
        run(args(src.path(), dst.path())).unwrap();
        for name in PLUGINS {
            let path = dst.path().join(name);
            assert!(
                fs::read_to_string(&path)
                    .unwrap()
                    .starts_with(&format!("new {name}"))
            );
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o755
            );
        }
        let leftovers: Vec<_> = fs::read_dir(dst.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
        assert!(
            !dst.path().join("macvtap").exists(),
            "no macvtap is created"
        );
    }

    #[test]
    fn writes_the_node_settings_from_its_flags() {
        let src = sources();
        let dst = tempfile::tempdir().unwrap();
        run(args(src.path(), dst.path())).unwrap();
        let path = dst.path().join(CNI_SETTINGS_FILE);
        let s = CniNodeSettings::parse(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(s.log_file, Some("/var/log/k8slan-cni.log".into()));
        assert_eq!(s.log_level.as_deref(), Some("debug"));
        assert_eq!(s.prepared_dir, PathBuf::from("/run/k8slan/prepared"));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let mut no_log = args(src.path(), dst.path());
        no_log.cni_log_file = String::new();
        run(no_log).unwrap();
        let s = CniNodeSettings::parse(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(s.log_file, None);
    }

    #[test]
    fn paths_that_are_not_absolute_and_normalized_are_refused() {
        let src = sources();
        let dst = tempfile::tempdir().unwrap();
        for (flag, bad) in [
            ("--cni-log-file", "relative.log"),
            ("--cni-log-file", "/var/log/../../etc/shadow"),
            ("--dev-dir", "run/k8slan/dev"),
            ("--prepared-dir", "/run//prepared"),
        ] {
            let mut a = args(src.path(), dst.path());
            match flag {
                "--cni-log-file" => a.cni_log_file = bad.into(),
                "--dev-dir" => a.dev_dir = bad.into(),
                _ => a.prepared_dir = bad.into(),
            }
            let err = run(a).unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
        assert!(!dst.path().join(CNI_SETTINGS_FILE).exists());
    }

    #[test]
    fn a_foreign_macvtap_is_left_byte_for_byte_and_an_old_k8slan_one_is_replaced() {
        let src = sources();
        let dst = tempfile::tempdir().unwrap();
        let kubevirt = b"\x7fELF kubevirt macvtap-cni".to_vec();
        fs::write(dst.path().join("macvtap"), &kubevirt).unwrap();
        run(args(src.path(), dst.path())).unwrap();
        assert_eq!(fs::read(dst.path().join("macvtap")).unwrap(), kubevirt);

        fs::write(
            dst.path().join("macvtap"),
            format!("old k8slan build: request {K8SLAN_BUILD_MARKER}/k8slan-mac-vm"),
        )
        .unwrap();
        run(args(src.path(), dst.path())).unwrap();
        assert_eq!(
            fs::read(dst.path().join("macvtap")).unwrap(),
            fs::read(src.path().join(MAC_CNI_TYPE)).unwrap()
        );

        // A symlink named macvtap is not ours either, whatever it points at.
        fs::remove_file(dst.path().join("macvtap")).unwrap();
        std::os::unix::fs::symlink(src.path().join(MAC_CNI_TYPE), dst.path().join("macvtap"))
            .unwrap();
        run(args(src.path(), dst.path())).unwrap();
        assert!(
            fs::symlink_metadata(dst.path().join("macvtap"))
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_symlink_planted_at_the_temporary_name_is_not_followed() {
        let src = sources();
        let dst = tempfile::tempdir().unwrap();
        let victim = dst.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, dst.path().join(".k8slanveth.k8slan-tmp")).unwrap();
        run(args(src.path(), dst.path())).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn a_missing_plugin_is_an_error_that_names_it() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let err = run(args(src.path(), dst.path())).unwrap_err().to_string();
        assert!(err.contains("k8slanveth"), "{err}");
    }
}
