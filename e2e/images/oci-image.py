#!/usr/bin/env python3
"""Write a single-layer OCI image-layout tarball from local files (Python stdlib only).

Nothing is pulled: the image is assembled from files on this machine, then imported
into containerd with `ctr -n k8s.io images import` (see import-image.sh).

Usage:
  oci-image.py --name REF --output OUT.tar [options]

Options (repeatable ones marked *):
  --add SRC:DEST        * copy a file or a directory tree SRC to DEST in the image
                          (DEST ending in "/" keeps SRC's basename)
  --symlink DEST:TARGET * create symlink DEST -> TARGET
  --mkdir DEST[:MODE]   * create an empty directory (MODE octal, default 755)
  --entrypoint ARG      * entrypoint argv element (in order)
  --cmd ARG             * default arguments (in order)
  --env KEY=VALUE       * environment variable (PATH has a default)
  --workdir DIR           working directory
  --user USER             user[:group] to run as
  --label KEY=VALUE     * image label
  --arch ARCH             architecture (default: amd64)

The layer is deterministic (sorted entries, mtime 0, uid/gid 0), so the same inputs
give the same image digest. Example (k8slan's own image):
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
    def _info(path, kind, mode):
        ti = tarfile.TarInfo(path)
        ti.type, ti.mode = kind, mode
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.mtime = 0
        return ti

    def mkdir(self, path, mode=0o755):
        path = path.strip("/")
        self._parents(path)
        self.entries[path] = (self._info(path, tarfile.DIRTYPE, mode), None)

    def symlink(self, path, target):
        path = path.strip("/")
        self._parents(path)
        ti = self._info(path, tarfile.SYMTYPE, 0o777)
        ti.linkname = target
        self.entries[path] = (ti, None)

    def add_file(self, src, path):
        path = path.strip("/")
        self._parents(path)
        st = os.stat(src)  # follows symlinks on purpose: we copy what they point to
        ti = self._info(path, tarfile.REGTYPE, stat.S_IMODE(st.st_mode))
        ti.size = st.st_size
        self.entries[path] = (ti, src)

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

    def tar_bytes(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self.entries):
                ti, src = self.entries[path]
                if src is None:
                    tar.addfile(ti)
                else:
                    with open(src, "rb") as f:
                        tar.addfile(ti, f)
        return buf.getvalue()


def blob(out, data, media_type):
    """Add a content-addressed blob to the outer tar; return its descriptor."""
    digest = hashlib.sha256(data).hexdigest()
    ti = tarfile.TarInfo(f"blobs/sha256/{digest}")
    ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
    out.addfile(ti, io.BytesIO(data))
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def jbytes(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="image reference, e.g. k8slan.local/testbox:dev")
    p.add_argument("--output", required=True)
    p.add_argument("--add", action="append", default=[], type=split_pair)
    p.add_argument("--symlink", action="append", default=[], type=split_pair)
    p.add_argument("--mkdir", action="append", default=[])
    p.add_argument("--entrypoint", action="append")
    p.add_argument("--cmd", action="append")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--workdir")
    p.add_argument("--user")
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--arch", default="amd64")
    a = p.parse_args()

    layer = Layer()
    for d in a.mkdir:
        path, _, mode = d.partition(":")
        layer.mkdir(path, int(mode, 8) if mode else 0o755)
    for src, dest in a.add:
        layer.add(src, dest)
    for dest, target in a.symlink:
        layer.symlink(dest, target)
    raw = layer.tar_bytes()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(raw)

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
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "k8slan e2e/images/oci-image.py"}],
    }

    tmp = a.output + ".tmp"
    with tarfile.open(tmp, mode="w") as out:
        layer_desc = blob(out, gz.getvalue(), "application/vnd.oci.image.layer.v1.tar+gzip")
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
