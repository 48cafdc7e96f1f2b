#!/usr/bin/env python3
"""Write a single-layer OCI image-layout tarball from local files (Python stdlib only).

Nothing is pulled: the image is assembled from files on this machine, then imported
into containerd with `ctr -n k8s.io images import` (see import-image.sh).

Usage:
  oci-image.py --name REF --output OUT.tar [options]

Options (repeatable ones marked *):
  --add SRC:DEST        * copy a file or a directory tree SRC to DEST in the image
                          (DEST ending in "/" keeps SRC's basename)
  --rootfs DIR          * merge the tree DIR into the image's / keeping its symlinks,
                          modes, numeric owners and file capabilities (security.capability);
                          later options win on the same path
  --symlink DEST:TARGET * create symlink DEST -> TARGET
  --mkdir DEST[:MODE]   * create an empty directory (MODE octal, default 755)
  --chown DEST:UID:GID  * set the numeric owner of the entry DEST (applied after the
                          entries above; DEST must be one of them, it is not recursive)
  --chmod DEST:MODE     * set the mode (octal) of the entry DEST (likewise)
  --entrypoint ARG      * entrypoint argv element (in order)
  --cmd ARG             * default arguments (in order)
  --env KEY=VALUE       * environment variable (PATH has a default)
  --workdir DIR           working directory
  --user USER             user[:group] to run as
  --label KEY=VALUE     * image label
  --arch ARCH             architecture (default: amd64)

The layer is deterministic (sorted entries, mtime 0, uid/gid 0 except what --rootfs
takes from its tree and what --chown sets), so the same inputs give the same image
digest. The layer is written through temporary files beside OUT, so large root
filesystems do not have to fit in memory. Example (k8slan's own image):
  oci-image.py --name k8slan.local/k8slan:dev --output k8slan.tar \
      --add target/x86_64-unknown-linux-musl/release/k8slan-agent:/usr/bin/k8slan-agent \
      --entrypoint /usr/bin/k8slan-agent
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CAP_XATTR = "security.capability"


def split_pair(value, sep=":"):
    if sep not in value:
        raise argparse.ArgumentTypeError(f"expected A{sep}B, got {value!r}")
    a, b = value.split(sep, 1)
    return a, b


class Layer:
    """Collects entries keyed by their path in the image, then writes a tar."""

    def __init__(self):
        self.entries = {}  # path in image (no leading slash) -> (TarInfo, source path or None)

    def _parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.entries:
                self.mkdir(d)

    @staticmethod
    def _info(path, kind, mode, owner=(0, 0)):
        ti = tarfile.TarInfo(path)
        ti.type, ti.mode = kind, mode
        ti.uid, ti.gid = owner
        # Names only for root; other owners are numeric (the image's /etc/passwd names them).
        ti.uname = "root" if ti.uid == 0 else ""
        ti.gname = "root" if ti.gid == 0 else ""
        ti.mtime = 0
        return ti

    def mkdir(self, path, mode=0o755, owner=(0, 0)):
        path = path.strip("/")
        if not path:
            return  # the image's root itself is not an entry
        self._parents(path)
        self.entries[path] = (self._info(path, tarfile.DIRTYPE, mode, owner), None)

    def symlink(self, path, target, owner=(0, 0)):
        path = path.strip("/")
        self._parents(path)
        ti = self._info(path, tarfile.SYMTYPE, 0o777, owner)
        ti.linkname = target
        self.entries[path] = (ti, None)

    def add_file(self, src, path, owner=(0, 0), keep_caps=False):
        path = path.strip("/")
        self._parents(path)
        st = os.stat(src)  # follows symlinks on purpose: we copy what they point to
        ti = self._info(path, tarfile.REGTYPE, stat.S_IMODE(st.st_mode), owner)
        ti.size = st.st_size
        if keep_caps:
            caps = file_caps(src)
            if caps is not None:
                # Binary value, carried as the PAX record containerd applies as an xattr.
                ti.pax_headers = {f"SCHILY.xattr.{CAP_XATTR}": caps.decode("utf-8", "surrogateescape")}
        self.entries[path] = (ti, src)

    def add_rootfs(self, root):
        """Merge the tree at root into /, keeping what a package manager set up there."""
        if not os.path.isdir(root):
            sys.exit(f"oci-image: --rootfs needs a directory: {root}")
        for dirpath, dirs, files in os.walk(root):
            dirs.sort()
            for name in sorted(dirs) + sorted(files):
                full = os.path.join(dirpath, name)
                dest = os.path.relpath(full, root)
                st = os.lstat(full)
                owner = (st.st_uid, st.st_gid)
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(dest, os.readlink(full), owner)
                elif stat.S_ISDIR(st.st_mode):
                    self.mkdir(dest, stat.S_IMODE(st.st_mode), owner)
                elif stat.S_ISREG(st.st_mode):
                    self.add_file(full, dest, owner, keep_caps=True)
                else:
                    sys.exit(f"oci-image: {full}: only directories, files and symlinks go in an image")

    def add(self, src, dest):
        if not os.path.exists(src):
            sys.exit(f"oci-image: no such file: {src}")
        if dest.endswith("/"):
            dest += os.path.basename(src.rstrip("/"))
        if os.path.isdir(src):
            self.mkdir(dest, stat.S_IMODE(os.stat(src).st_mode))
            for root, dirs, files in os.walk(src):
                rel = os.path.relpath(root, src)
                base = dest if rel == "." else f"{dest}/{rel}"
                for d in sorted(dirs):
                    full = os.path.join(root, d)
                    if os.path.islink(full):
                        self.symlink(f"{base}/{d}", os.readlink(full))
                    else:
                        self.mkdir(f"{base}/{d}", stat.S_IMODE(os.stat(full).st_mode))
                for f in sorted(files):
                    full = os.path.join(root, f)
                    if os.path.islink(full):
                        self.symlink(f"{base}/{f}", os.readlink(full))
                    else:
                        self.add_file(full, f"{base}/{f}")
        else:
            self.add_file(src, dest)

    def entry(self, dest):
        path = dest.strip("/")
        if path not in self.entries:
            sys.exit(f"oci-image: --chown/--chmod of {dest}: no such entry in the image")
        return self.entries[path][0]

    def chown(self, dest, uid, gid):
        ti = self.entry(dest)
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = "root" if (uid, gid) == (0, 0) else ""

    def chmod(self, dest, mode):
        self.entry(dest).mode = mode

    def write_tar(self, fileobj):
        with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                ti, src = self.entries[path]
                if src is None:
                    tar.addfile(ti)
                else:
                    with open(src, "rb") as f:
                        tar.addfile(ti, f)


def file_caps(path):
    """The raw security.capability xattr of path, or None."""
    try:
        return os.getxattr(path, CAP_XATTR, follow_symlinks=False)
    except OSError:
        return None


class HashingWriter:
    """A write-only file that passes bytes on and hashes them."""

    def __init__(self, inner):
        self.inner, self.sha, self.size = inner, hashlib.sha256(), 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def tell(self):
        return self.size

    def flush(self):
        self.inner.flush()


def write_layer(layer, gz_path):
    """Write the gzipped layer to gz_path; return (diff_id hex, digest hex, size)."""
    with open(gz_path, "wb") as out:
        gz_hash = HashingWriter(out)
        with gzip.GzipFile(fileobj=gz_hash, mode="wb", mtime=0, compresslevel=6) as g:
            raw_hash = HashingWriter(g)
            layer.write_tar(raw_hash)
    return raw_hash.sha.hexdigest(), gz_hash.sha.hexdigest(), gz_hash.size


def blob(out, data, media_type):
    """Add a content-addressed blob to the outer tar; return its descriptor."""
    digest = hashlib.sha256(data).hexdigest()
    ti = tarfile.TarInfo(f"blobs/sha256/{digest}")
    ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
    out.addfile(ti, io.BytesIO(data))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def file_blob(out, path, digest, size, media_type):
    """Add a blob already on disk (with known sha256 and size) to the outer tar."""
    ti = tarfile.TarInfo(f"blobs/sha256/{digest}")
    ti.size, ti.mtime, ti.mode = size, 0, 0o644
    with open(path, "rb") as f:
        out.addfile(ti, f)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": size}


def jbytes(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="image reference, e.g. k8slan.local/testbox:dev")
    p.add_argument("--output", required=True)
    p.add_argument("--add", action="append", default=[], type=split_pair)
    p.add_argument("--rootfs", action="append", default=[])
    p.add_argument("--symlink", action="append", default=[], type=split_pair)
    p.add_argument("--mkdir", action="append", default=[])
    p.add_argument("--chown", action="append", default=[], type=split_pair)
    p.add_argument("--chmod", action="append", default=[], type=split_pair)
    p.add_argument("--entrypoint", action="append")
    p.add_argument("--cmd", action="append")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--workdir")
    p.add_argument("--user")
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--arch", default="amd64")
    a = p.parse_args()

    layer = Layer()
    for root in a.rootfs:
        layer.add_rootfs(root)
    for d in a.mkdir:
        path, _, mode = d.partition(":")
        layer.mkdir(path, int(mode, 8) if mode else 0o755)
    for src, dest in a.add:
        layer.add(src, dest)
    for dest, target in a.symlink:
        layer.symlink(dest, target)
    for dest, owner in a.chown:
        uid, _, gid = owner.partition(":")
        layer.chown(dest, int(uid), int(gid or uid))
    for dest, mode in a.chmod:
        layer.chmod(dest, int(mode, 8))
    tmp, gz_path = a.output + ".tmp", a.output + ".layer.tmp"
    try:
        write_image(a, layer, tmp, gz_path)
    finally:
        for leftover in (tmp, gz_path):
            if os.path.exists(leftover):
                os.unlink(leftover)


def write_image(a, layer, tmp, gz_path):
    diff_id, gz_digest, gz_size = write_layer(layer, gz_path)

    env = list(a.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, f"PATH={DEFAULT_PATH}")
    config = {"Env": env}
    if a.entrypoint:
        config["Entrypoint"] = a.entrypoint
    if a.cmd:
        config["Cmd"] = a.cmd
    if a.workdir:
        config["WorkingDir"] = a.workdir
    if a.user:
        config["User"] = a.user
    if a.label:
        config["Labels"] = dict(split_pair(l, "=") for l in a.label)

    image_config = {
        "architecture": a.arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "k8slan e2e/images/oci-image.py"}],
    }

    with tarfile.open(tmp, mode="w") as out:
        layer_desc = file_blob(out, gz_path, gz_digest, gz_size, "application/vnd.oci.image.layer.v1.tar+gzip")
        config_desc = blob(out, jbytes(image_config), "application/vnd.oci.image.config.v1+json")
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config_desc, "layers": [layer_desc]}
        manifest_desc = blob(out, jbytes(manifest), "application/vnd.oci.image.manifest.v1+json")
        manifest_desc["platform"] = {"architecture": a.arch, "os": "linux"}
        manifest_desc["annotations"] = {
            "io.containerd.image.name": a.name,  # full name, used by `ctr images import`
            "org.opencontainers.image.ref.name": a.name.rsplit(":", 1)[-1] if ":" in a.name.rsplit("/", 1)[-1] else "latest",
        }
        for name, data in (("oci-layout", jbytes({"imageLayoutVersion": "1.0.0"})),
                           ("index.json", jbytes({"schemaVersion": 2, "manifests": [manifest_desc]}))):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            out.addfile(ti, io.BytesIO(data))
    os.replace(tmp, a.output)
    print(f"{a.output}: {a.name} manifest {manifest_desc['digest']}", file=sys.stderr)


if __name__ == "__main__":
    main()
