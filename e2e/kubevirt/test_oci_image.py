"""Tests of e2e/images/oci-image.py's --rootfs, as the KubeVirt images use it (stdlib only).

Run: python3 -m unittest e2e/kubevirt/test_oci_image.py   (root: owners and file capabilities)
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import unittest

OCI_IMAGE = os.path.join(os.path.dirname(__file__), "..", "images", "oci-image.py")


def build(out, *args):
    subprocess.run(["python3", OCI_IMAGE, "--name", "k8slan.local/test:1", "--output", out, *args],
                   check=True, capture_output=True)


def layer_members(archive):
    """{path: TarInfo} of the single layer of an OCI archive."""
    with tarfile.open(archive) as outer:
        def blob(digest):
            return outer.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}").read()
        index = json.loads(outer.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        layer = blob(manifest["layers"][0]["digest"])
        config = json.loads(blob(manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()]
    with tarfile.open(fileobj=io.BytesIO(layer)) as t:
        return {m.name: m for m in t.getmembers()}


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("setcap"), "needs root and setcap")
class RootfsTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.root = os.path.join(self.dir, "root")
        os.makedirs(f"{self.root}/usr/bin")
        os.makedirs(f"{self.root}/home/qemu")
        os.chown(f"{self.root}/home/qemu", 107, 107)
        os.symlink("usr/bin", f"{self.root}/bin")
        with open(f"{self.root}/usr/bin/tool", "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(f"{self.root}/usr/bin/tool", 0o4755)
        subprocess.run(["setcap", "cap_net_bind_service=+ep", f"{self.root}/usr/bin/tool"], check=True)

    def tearDown(self):
        shutil.rmtree(self.dir)

    def test_keeps_symlinks_modes_owners_and_capabilities(self):
        out = os.path.join(self.dir, "a.tar")
        build(out, "--rootfs", self.root)
        m = layer_members(out)
        self.assertTrue(m["bin"].issym())
        self.assertEqual(m["bin"].linkname, "usr/bin")
        self.assertEqual((m["home/qemu"].uid, m["home/qemu"].gid), (107, 107))
        self.assertEqual(m["usr/bin/tool"].mode, 0o4755)
        self.assertEqual((m["usr/bin/tool"].uid, m["usr/bin/tool"].uname), (0, "root"))
        caps = m["usr/bin/tool"].pax_headers["SCHILY.xattr.security.capability"]
        self.assertEqual(caps.encode("utf-8", "surrogateescape"),
                         os.getxattr(f"{self.root}/usr/bin/tool", "security.capability"))
        self.assertNotIn("", m)  # the root itself is no entry

    def test_later_add_wins_and_output_is_deterministic(self):
        extra = os.path.join(self.dir, "tool2")
        with open(extra, "w") as f:
            f.write("replaced\n")
        a, b = os.path.join(self.dir, "a.tar"), os.path.join(self.dir, "b.tar")
        build(a, "--rootfs", self.root, "--add", f"{extra}:/usr/bin/tool")
        os.utime(f"{self.root}/home/qemu", (1, 1))  # mtimes do not reach the image
        build(b, "--rootfs", self.root, "--add", f"{extra}:/usr/bin/tool")
        with open(a, "rb") as fa, open(b, "rb") as fb:
            self.assertEqual(fa.read(), fb.read())
        tool = layer_members(a)["usr/bin/tool"]
        self.assertEqual(tool.size, len("replaced\n"))
        self.assertNotIn("SCHILY.xattr.security.capability", tool.pax_headers)

    def test_rejects_special_files(self):
        os.mkfifo(f"{self.root}/fifo")
        with self.assertRaises(subprocess.CalledProcessError) as err:
            build(os.path.join(self.dir, "c.tar"), "--rootfs", self.root)
        self.assertIn(b"only directories, files and symlinks", err.exception.stderr)


if __name__ == "__main__":
    unittest.main()
