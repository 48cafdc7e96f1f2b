//! `k8slan-agent install-cni`: copies the CNI plugins into the host's CNI binary directory.
//! The image has no shell, so the init container runs this. Each file is written to a temporary
//! name in the destination directory and renamed over the old one, so a runtime calling the
//! plugin at that moment sees either the old or the new binary, never half of one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

/// The plugins the image carries.
pub const PLUGINS: [&str; 2] = ["k8slanveth", "macvtap"];

#[derive(Debug, Args)]
pub struct InstallCniArgs {
    /// Directory holding the plugins in the image.
    #[arg(long, env = "K8SLAN_CNI_SOURCE_DIR", default_value = "/opt/k8slan/cni")]
    pub source_dir: PathBuf,
    /// The host's CNI binary directory, as mounted in the container.
    #[arg(long, env = "K8SLAN_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    pub dest_dir: PathBuf,
}

pub fn run(args: InstallCniArgs) -> Result<()> {
    for name in PLUGINS {
        install(&args.source_dir.join(name), &args.dest_dir, name)?;
        eprintln!("installed {name} into {}", args.dest_dir.display());
    }
    Ok(())
}

fn install(source: &Path, dest_dir: &Path, name: &str) -> Result<()> {
    let bytes =
        fs::read(source).with_context(|| format!("cannot read CNI plugin {}", source.display()))?;
    if bytes.is_empty() {
        bail!("CNI plugin {} is empty", source.display());
    }
    let tmp = dest_dir.join(format!(".{name}.k8slan-tmp"));
    let dest = dest_dir.join(name);
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.set_permissions(fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        fs::rename(&tmp, &dest)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        anyhow::anyhow!(
            "cannot install CNI plugin {name} into {}: {e}",
            dest_dir.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_both_plugins_executable_and_replaces_old_ones() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        for name in PLUGINS {
            fs::write(src.path().join(name), format!("new {name}")).unwrap();
        }
        fs::write(dst.path().join("macvtap"), "old").unwrap();
        run(InstallCniArgs {
            source_dir: src.path().into(),
            dest_dir: dst.path().into(),
        })
        .unwrap();
        for name in PLUGINS {
            let path = dst.path().join(name);
            assert_eq!(fs::read_to_string(&path).unwrap(), format!("new {name}"));
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
    }

    #[test]
    fn a_missing_plugin_is_an_error_that_names_it() {
        let src = tempfile::tempdir().unwrap();
        let dst = tempfile::tempdir().unwrap();
        let err = run(InstallCniArgs {
            source_dir: src.path().into(),
            dest_dir: dst.path().into(),
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("k8slanveth"), "{err}");
    }
}
