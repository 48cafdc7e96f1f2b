//! Kernel-side checks of names that become one path component (a link name under
//! `/sys/class/net` or `/proc/sys/net/.../conf`, an entry of a directory k8slan owns).
//!
//! The naming rules of k8slan's objects live in `k8slan_api::validate`; these checks only make
//! sure that whatever reaches a path stays one component of it, whoever called.

/// Why a name cannot be a path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a {what}: {why}")]
pub struct NameError {
    pub name: String,
    pub what: &'static str,
    pub why: &'static str,
}

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_LINK_NAME: usize = 15;
/// Longest file name of one path component (`NAME_MAX`).
pub const MAX_FILE_NAME: usize = 255;

/// `name` is a usable single path component of at most `max` bytes.
fn component(name: &str, what: &'static str, max: usize) -> Result<(), NameError> {
    let err = |why| {
        Err(NameError {
            name: name.to_owned(),
            what,
            why,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > max {
        return err("it is too long");
    }
    if name == "." || name == ".." {
        return err("it names a directory itself");
    }
    if name.contains('/') || name.contains('\0') {
        return err("it contains '/' or NUL");
    }
    Ok(())
}

/// A link name that can be used in `/sys/class/net/<name>` and `/proc/sys/net/*/conf/<name>`.
pub fn link_name(name: &str) -> Result<(), NameError> {
    component(name, "link name", MAX_LINK_NAME)?;
    if name.chars().any(|c| c.is_whitespace() || c == ':') {
        return Err(NameError {
            name: name.to_owned(),
            what: "link name",
            why: "it contains whitespace or ':'",
        });
    }
    Ok(())
}

/// A file name that stays inside its directory.
pub fn file_name(name: &str) -> Result<(), NameError> {
    component(name, "file name", MAX_FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_their_directory_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x", "a\0b"] {
            assert!(link_name(bad).is_err(), "{bad:?}");
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
        assert!(link_name("sixteen-chars-xx").is_err());
        assert!(link_name("a b").is_err());
        assert!(link_name("eth0:1").is_err());
        assert!(file_name(&"x".repeat(256)).is_err());
        for good in ["eth0", "mvt-srl1", "e1-1"] {
            assert!(link_name(good).is_ok(), "{good:?}");
        }
        assert!(file_name("tap-srl1").is_ok());
        assert!(file_name(".tap-srl1.new").is_ok());
    }
}
