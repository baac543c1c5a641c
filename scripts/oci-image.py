#!/usr/bin/env python3
"""Builds and checks single-layer OCI image layout tars without a container daemon.

  oci-image.py build --name docker.io/edgewasm/operator:0.1.0 --out operator.tar \
      --file target/release/edgewasm-operator:/usr/local/bin/edgewasm-operator \
      --entrypoint /usr/local/bin/edgewasm-operator --user 65532:65532 [--with-libs]
  oci-image.py check operator.tar [--name docker.io/edgewasm/operator:0.1.0]

The tar imports with `ctr image import` / `k3s ctr image import`. The layer holds the given files,
a passwd/group entry for the non-root user, /tmp, and with --with-libs the shared libraries (and
the dynamic loader) each dynamically linked file needs, as `ldd` reports them. Builds are
reproducible: fixed timestamps (SOURCE_DATE_EPOCH, default 0), sorted entries, root ownership.
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import platform
import re
import subprocess
import sys
import tarfile

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "riscv64": "riscv64"}


def epoch():
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def shared_libraries(path):
    """Absolute paths of the libraries (and loader) a dynamically linked file needs; [] if static."""
    result = subprocess.run(["ldd", path], capture_output=True, text=True)
    if result.returncode != 0 or "not a dynamic executable" in result.stdout + result.stderr:
        return []
    libs = []
    for line in result.stdout.splitlines():
        if "not found" in line:
            sys.exit(f"oci-image: {path} needs a library that is not installed: {line.strip()}")
        match = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if match:
            libs.append(match.group(1))
    return libs


class Layer:
    """A tar layer built in memory with directories created as needed."""

    def __init__(self):
        self.entries = {}

    def _parents(self, path):
        parts = path.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            directory = "/".join(parts[:i])
            self.entries.setdefault(directory, ("dir", 0o755, None))

    def add_dir(self, path, mode=0o755):
        self._parents(path)
        self.entries[path.strip("/")] = ("dir", mode, None)

    def add_bytes(self, path, data, mode=0o644):
        self._parents(path)
        self.entries[path.strip("/")] = ("file", mode, data)

    def add_file(self, source, dest, mode=None):
        with open(source, "rb") as f:
            data = f.read()
        if mode is None:
            mode = 0o755 if os.access(source, os.X_OK) else 0o644
        self.add_bytes(dest, data, mode)

    def tar_bytes(self):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self.entries):
                kind, mode, data = self.entries[name]
                info = tarfile.TarInfo(name)
                info.mode, info.mtime, info.uid, info.gid = mode, epoch(), 0, 0
                info.uname = info.gname = "root"
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def build(args):
    layer = Layer()
    uid, _, gid = args.user.partition(":")
    gid = gid or uid
    layer.add_bytes("etc/passwd", "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n".encode())
    layer.add_bytes("etc/group", b"root:x:0:\nnonroot:x:65532:\n")
    layer.add_dir("tmp", 0o1777)
    layer.add_dir("home/nonroot", 0o755)
    for spec in args.file:
        source, _, rest = spec.partition(":")
        dest, _, mode = rest.partition(":")
        if not dest:
            sys.exit(f"oci-image: --file {spec!r} is not SOURCE:DEST[:MODE]")
        layer.add_file(source, dest, int(mode, 8) if mode else None)
        if args.with_libs:
            for lib in shared_libraries(source):
                layer.add_file(os.path.realpath(lib), lib, 0o755)

    layer_tar = layer.tar_bytes()
    layer_gz = gzip.compress(layer_tar, compresslevel=9, mtime=0)
    arch = args.arch or GOARCH.get(platform.machine(), platform.machine())
    created = datetime.datetime.fromtimestamp(epoch(), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": f"{uid}:{gid}",
            "Entrypoint": [args.entrypoint] if args.entrypoint else None,
            "Cmd": args.cmd or None,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.source": "https://example.invalid/edgewasm",
                       "org.opencontainers.image.version": args.name.rsplit(":", 1)[-1]},
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256(layer_tar)]},
        "history": [{"created": created, "created_by": "scripts/oci-image.py"}],
    }
    config["config"] = {k: v for k, v in config["config"].items() if v is not None}
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": sha256(config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": sha256(layer_gz), "size": len(layer_gz)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": sha256(manifest_bytes),
            "size": len(manifest_bytes),
            "platform": {"architecture": arch, "os": "linux"},
            "annotations": {
                "io.containerd.image.name": args.name,
                "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1],
            },
        }],
    }
    blobs = [config_bytes, layer_gz, manifest_bytes]
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index, sort_keys=True, indent=2).encode()}
    for blob in blobs:
        files["blobs/sha256/" + sha256(blob).split(":", 1)[1]] = blob

    tmp = args.out + ".part"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for directory in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch()
            tar.addfile(info)
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, epoch()
            tar.addfile(info, io.BytesIO(files[name]))
    os.replace(tmp, args.out)
    print(f"{args.out}: {args.name} {sha256(manifest_bytes)} ({len(layer_gz)} bytes compressed)")


def check(args):
    """Validates the layout: every digest and size, diff_ids, media types, and the image name."""
    problems = []
    with tarfile.open(args.tar) as tar:
        blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}

    def blob(descriptor, what):
        algorithm, _, digest = descriptor["digest"].partition(":")
        data = blobs.get(f"blobs/{algorithm}/{digest}")
        if data is None:
            problems.append(f"{what} blob {descriptor['digest']} is missing")
            return None
        if sha256(data) != descriptor["digest"]:
            problems.append(f"{what} blob does not match its digest {descriptor['digest']}")
        if len(data) != descriptor["size"]:
            problems.append(f"{what} size {descriptor['size']} != {len(data)}")
        return data

    if json.loads(blobs.get("oci-layout", b"{}")).get("imageLayoutVersion") != "1.0.0":
        problems.append("oci-layout is missing or not version 1.0.0")
    index = json.loads(blobs["index.json"])
    if index.get("schemaVersion") != 2 or len(index.get("manifests", [])) != 1:
        problems.append("index.json must hold exactly one manifest")
    for descriptor in index.get("manifests", []):
        name = descriptor.get("annotations", {}).get("io.containerd.image.name")
        if args.name and name != args.name:
            problems.append(f"image name {name!r} != {args.name!r}")
        manifest = json.loads(blob(descriptor, "manifest") or b"{}")
        if manifest.get("mediaType") != MEDIA_MANIFEST:
            problems.append("manifest media type")
        config = json.loads(blob(manifest["config"], "config") or b"{}")
        diff_ids = []
        for layer in manifest.get("layers", []):
            if layer["mediaType"] != MEDIA_LAYER:
                problems.append(f"layer media type {layer['mediaType']}")
            data = blob(layer, "layer")
            if data is not None:
                raw = gzip.decompress(data)
                diff_ids.append(sha256(raw))
                with tarfile.open(fileobj=io.BytesIO(raw)) as layer_tar:
                    names = set(layer_tar.getnames())
                for path in args.expect_file or []:
                    if path.strip("/") not in names:
                        problems.append(f"layer has no {path}")
        if config.get("rootfs", {}).get("diff_ids") != diff_ids:
            problems.append("config diff_ids do not match the layers")
        for path in config.get("config", {}).get("Entrypoint", []) or []:
            if args.expect_file is not None and path.strip("/") not in names:
                problems.append(f"entrypoint {path} is not in the layer")
    if problems:
        sys.exit(f"oci-image: {args.tar}: " + "; ".join(problems))
    print(f"ok   {args.tar}: valid OCI layout ({name})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--name", required=True, help="full reference, e.g. docker.io/edgewasm/agent:0.1.0")
    b.add_argument("--out", required=True)
    b.add_argument("--file", action="append", required=True, help="SOURCE:DEST[:OCTAL_MODE]")
    b.add_argument("--entrypoint")
    b.add_argument("--cmd", action="append")
    b.add_argument("--user", default="65532:65532")
    b.add_argument("--arch")
    b.add_argument("--with-libs", action="store_true", help="add the shared libraries dynamic files need")
    c = sub.add_parser("check")
    c.add_argument("tar")
    c.add_argument("--name")
    c.add_argument("--expect-file", action="append")
    args = parser.parse_args()
    build(args) if args.command == "build" else check(args)


if __name__ == "__main__":
    main()
