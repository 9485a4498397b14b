"""packaging/kubernetes: every file valid against Kubernetes' own OpenAPI schemas (offline,
through kubernetes-validate's copies), the DaemonSet saying what the node needs, the
manifests ConfigMap generated from manifests/ and bpf/, and ``bpforch serve`` run against
both ConfigMaps laid out exactly as the kubelet projects them, through ``..data`` swaps."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator import cli
from tests.conftest import BPF_DIR, ROOT
from tests.service.helpers import NotifySocket

KUBE = ROOT / "packaging" / "kubernetes"
FILES = sorted(KUBE.glob("*.yaml"))
# the oldest Kubernetes the DaemonSet is for (securityContext.appArmorProfile: 1.30) and the
# newest kubernetes-validate knows
VERSIONS = ["1.30.0", "latest"]
CONFIGMAP_ARGS = [
    "bpforch-manifests",
    "-n",
    "bpforch-system",
    "manifests/tp-counter.yaml",
    "manifests/shared-stats.yaml",
]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kind(kind: str) -> dict[str, Any]:
    found = [d for f in FILES for d in _docs(f) if d["kind"] == kind]
    assert len(found) >= 1, kind
    return found[0]


def _configmap(name: str) -> dict[str, Any]:
    return next(
        d
        for f in FILES
        for d in _docs(f)
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", FILES, ids=[f.name for f in FILES])
def test_every_file_is_valid_kubernetes(path: Path, version: str) -> None:
    import kubernetes_validate

    target = kubernetes_validate.latest_version() if version == "latest" else version
    docs = _docs(path)
    assert docs, path
    for doc in docs:
        # strict: a misspelt field is an error, as kubectl --validate=strict makes it
        kubernetes_validate.validate(doc, target, strict=True)


def test_the_files_apply_in_order() -> None:
    """kubectl apply -f DIR goes by file name: the namespace first, the DaemonSet last."""
    kinds = [d["kind"] for f in FILES for d in _docs(f)]
    assert kinds == ["Namespace", "CustomResourceDefinition", "ConfigMap", "ConfigMap", "DaemonSet"]
    namespaced = [d for f in FILES for d in _docs(f) if d["kind"] in ("ConfigMap", "DaemonSet")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"bpforch-system"}


def _unit_capabilities() -> set[str]:
    for line in (ROOT / "packaging" / "bpforch.service").read_text().splitlines():
        if line.startswith("CapabilityBoundingSet="):
            return {c.removeprefix("CAP_") for c in line.split("=", 1)[1].split()}
    raise AssertionError("no CapabilityBoundingSet")


def _config() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(_configmap("bpforch-config")["data"]["config.yaml"])
    return config


def test_the_daemonset_gives_bpforch_the_node() -> None:
    ds = _kind("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["hostPID"] is True
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert set(sc["capabilities"]["add"]) == _unit_capabilities()
    assert sc["capabilities"]["drop"] == ["ALL"] and sc["privileged"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}

    def host(mount_path: str) -> str:
        return str(volumes[mounts[mount_path]["name"]]["hostPath"]["path"])

    config = _config()
    assert host("/sys/fs/bpf") == "/sys/fs/bpf"
    assert mounts["/sys/fs/bpf"]["mountPropagation"] == "HostToContainer"
    assert host("/sys/kernel/tracing") == "/sys/kernel/tracing"
    assert host("/sys/fs/cgroup") == "/sys/fs/cgroup"
    assert host("/var/run/netns") == "/var/run/netns"
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    assert host(config["state_dir"]) == config["state_dir"]  # the record outlives the pod
    assert str(Path(config["bpffs_root"]).parent) == "/sys/fs/bpf"
    # the manifests ConfigMap is the configuration's manifest directory
    (manifest_dir,) = config["manifests"]
    assert volumes[mounts[manifest_dir]["name"]]["configMap"]["name"] == "bpforch-manifests"
    # the command reads the configuration ConfigMap's key
    command = container["command"]
    config_path = Path(command[command.index("--config") + 1])
    assert volumes[mounts[str(config_path.parent)]["name"]]["configMap"]["name"] == "bpforch-config"
    assert config_path.name in _configmap("bpforch-config")["data"]
    # the probes ask the metrics endpoint
    port = int(config["metrics_address"].rsplit(":", 1)[1])
    (cport,) = container["ports"]
    assert cport["containerPort"] == port and cport["name"] == "metrics"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}


def _mount_of(path: str) -> dict[str, Any]:
    """The container's mount that holds ``path`` (the deepest mount point above it)."""
    (container,) = _kind("DaemonSet")["spec"]["template"]["spec"]["containers"]
    above = [m for m in container["volumeMounts"] if Path(path).is_relative_to(m["mountPath"])]
    assert above, f"{path} is on the root file system"
    return max(above, key=lambda m: len(Path(m["mountPath"]).parts))


def test_the_cache_dir_is_on_a_writable_volume() -> None:
    """The root file system is read-only: the configured cache_dir must be on a volume the
    pod may write, or the cache turns itself off on every node."""
    pod = _kind("DaemonSet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    config = _config()
    cache_dir = config["cache_dir"]
    assert config.get("cache", True) is True and Path(cache_dir).is_absolute()
    mount = _mount_of(cache_dir)
    assert not mount.get("readOnly", False)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert set(volume) == {"name", "emptyDir"}  # the pod's own, writable
    assert volume["emptyDir"].get("medium") != "Memory"  # not charged to the memory limit
    # room for the cache's bound plus an entry being written: a full emptyDir evicts the pod
    from orchestrator.ebpf import diskcache

    size = volume["emptyDir"]["sizeLimit"]
    assert size.endswith("Mi") and int(size[:-2]) << 20 >= diskcache.MAX_BYTES + diskcache.ENTRY_MAX
    # the kubelet makes an emptyDir mode 0777, which bpforch does not trust: the cache is a
    # directory below it, which bpforch creates mode 0700
    assert Path(cache_dir) != Path(mount["mountPath"])


def test_the_cache_works_in_the_volume_as_the_kubelet_makes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from orchestrator.ebpf import diskcache

    cache_dir = _config()["cache_dir"]
    mount = _mount_of(cache_dir)
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)  # an emptyDir as the kubelet creates it
    disk = diskcache.DiskCache(volume / Path(cache_dir).relative_to(mount["mountPath"]))
    with caplog.at_level(logging.WARNING, logger=diskcache.LOGGER):
        assert disk.put("spec", "a" * 64, b"payload")
        assert disk.get("spec", "a" * 64) == b"payload"
    assert not caplog.records, caplog.text
    assert disk.usage()[0] == 1


def test_the_configuration_is_valid(tmp_path: Path) -> None:
    from orchestrator.service.config import parse_config

    text = _configmap("bpforch-config")["data"]["config.yaml"]
    config = parse_config(text, tmp_path / "config.yaml")
    assert config.metrics_address == "0.0.0.0:9846" and config.program_stats


def test_the_manifests_configmap_is_generated() -> None:
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert cli.main(["configmap", *CONFIGMAP_ARGS], out, err) == 0, err.getvalue()
    finally:
        os.chdir(cwd)
    text = (KUBE / "30-manifests.yaml").read_text()
    body = "".join(line for line in text.splitlines(True) if not line.startswith("#"))
    assert body == out.getvalue(), f"regenerate: bpforch configmap {' '.join(CONFIGMAP_ARGS)}"
    cm = _configmap("bpforch-manifests")
    for name, data in cm["binaryData"].items():
        assert base64.b64decode(data) == (BPF_DIR / name).read_bytes(), name
    assert "object: tp_counter.o\n" in cm["data"]["tp-counter.yaml"]
    # comments and every other field stay as written
    original = (ROOT / "manifests" / "tp-counter.yaml").read_text()
    assert cm["data"]["tp-counter.yaml"] == original.replace(
        "object: ../bpf/tp_counter.o", "object: tp_counter.o"
    )


def test_configmap_refusals(tmp_path: Path) -> None:
    def run(*argv: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        return cli.main(["configmap", "cm", *argv], out, err), err.getvalue()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "m.yaml").write_text(
            f"apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {{name: {d}}}\n"
            f"spec: {{object: {BPF_DIR / 'tp_counter.o'}}}\n"
        )
    code, err = run(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (code, err) == (
        1,
        f"error: {tmp_path / 'b' / 'm.yaml'}: another manifest is named m.yaml too "
        f"({tmp_path / 'a' / 'm.yaml'}); a ConfigMap is one flat directory (rename one)\n",
    )
    other = tmp_path / "c" / "tp_counter.o"
    other.parent.mkdir()
    shutil.copyfile(BPF_DIR / "xdp_counter.o", other)
    (tmp_path / "b" / "m.yaml").unlink()
    (tmp_path / "b" / "n.yaml").write_text(
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: b}\n"
        f"spec: {{object: {other}}}\n"
    )
    code, err = run(str(tmp_path / "a"), str(tmp_path / "b"))
    assert code == 1 and err.startswith(f"error: {other}: another object is named tp_counter.o")
    big = tmp_path / "d" / "big.o"
    big.parent.mkdir()
    (tmp_path / "d" / "m.yaml").write_text(
        "apiVersion: bpforch.dev/v1\nkind: Collection\nmetadata: {name: d}\nspec: {object: big.o}\n"
    )
    shutil.copyfile(BPF_DIR / "xdp_counter.o", big)
    with big.open("ab") as f:  # a valid object past 1 MiB (padding after the ELF)
        f.write(bytes(1 << 20))
    code, err = run(str(tmp_path / "d"))
    assert code == 1 and "is over the 1048576 a ConfigMap holds (deliver the objects" in err
    code, err = run(str(tmp_path / "nosuch"))
    assert code == 1 and "nothing was changed" in err


# ---------------------------------------------------------------------------- the kubelet


class Projection:
    """A ConfigMap volume as the kubelet writes it (pkg/volume/util/atomic_writer.go): the
    files of one version in a timestamped directory ``..2006_01_02_15_04_05.NNN``, a
    ``..data`` symlink to it, and one visible symlink ``KEY -> ..data/KEY`` per key. An
    update writes a new timestamped directory, points ``..data_tmp`` at it and renames it
    over ``..data`` (the atomic swap), adds the new keys' symlinks, removes the old ones'
    and the old directory."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True)
        self.n = 0

    def write(self, cm: dict[str, Any]) -> None:
        files = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
        files.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
        self.n += 1
        stamp = datetime.now(UTC).strftime("..%Y_%m_%d_%H_%M_%S.") + f"{self.n:09d}"
        ts = self.dir / stamp
        ts.mkdir(mode=0o755)
        for key, content in files.items():
            (ts / key).write_bytes(content)
            (ts / key).chmod(0o644)
        old = os.readlink(self.dir / "..data") if (self.dir / "..data").is_symlink() else None
        os.symlink(stamp, self.dir / "..data_tmp")
        os.rename(self.dir / "..data_tmp", self.dir / "..data")
        for key in files:
            if not (self.dir / key).is_symlink():
                os.symlink(f"..data/{key}", self.dir / key)
        for entry in self.dir.iterdir():
            if not entry.name.startswith("..") and entry.name not in files:
                entry.unlink()
        if old is not None:
            shutil.rmtree(self.dir / old)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def node(tmp_path: Path, pin_dir: Path) -> Iterator[dict[str, Any]]:
    notify = NotifySocket(tmp_path)
    state = {"notify": notify, "procs": []}
    try:
        yield state
    finally:
        for proc in state["procs"]:  # type: ignore[attr-defined]
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        from orchestrator.reconcile import Reconciler

        Reconciler(bpffs_root=pin_dir / "root", state_dir=tmp_path / "state").destroy()
        notify.close()


@pytest.mark.kernel
def test_serve_from_kubelet_projections_through_data_swaps(
    node: dict[str, Any], tmp_path: Path, pin_dir: Path
) -> None:
    notify: NotifySocket = node["notify"]
    port = _free_port()
    config_cm = _configmap("bpforch-config")
    text = config_cm["data"]["config.yaml"]
    config = yaml.safe_load(text)
    (manifest_dir,) = config["manifests"]
    # the cache volume, an emptyDir as the kubelet makes it (mode 0777)
    cache_mount = _mount_of(config["cache_dir"])["mountPath"]
    cache_volume = tmp_path / "cache-volume"
    cache_volume.mkdir()
    cache_volume.chmod(0o777)
    cache_dir = cache_volume / Path(config["cache_dir"]).relative_to(cache_mount)
    # the same configuration, with this test's root, state dir, port and mount points
    text = (
        text.replace(manifest_dir, str(tmp_path / "manifests"))
        .replace(config["cache_dir"], str(cache_dir))
        .replace(config["bpffs_root"], str(pin_dir / "root"))
        .replace(config["state_dir"], str(tmp_path / "state"))
        .replace(config["metrics_address"], f"127.0.0.1:{port}")
        .replace("log_format: json", "log_format: logfmt")
    )
    Projection(tmp_path / "config").write({**config_cm, "data": {"config.yaml": text}})
    manifests = Projection(tmp_path / "manifests")
    cm = _configmap("bpforch-manifests")
    manifests.write(cm)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    env["NOTIFY_SOCKET"] = notify.env_value
    with (tmp_path / "daemon.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchestrator",
                "serve",
                "--config",
                str(tmp_path / "config" / "config.yaml"),
            ],
            env=env,
            stdout=log,
            stderr=log,
            cwd=tmp_path,
        )
    node["procs"].append(proc)

    def next_status() -> dict[str, str]:
        try:
            return notify.next(30)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{(tmp_path / 'daemon.log').read_text()}") from None

    assert next_status()["STATUS"].startswith("starting")
    assert next_status() == {"READY": "1", "STATUS": "ready: 3 collections applied, 3 changed"}
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/readyz", timeout=10) as r:
        assert r.status == 200
    os.getppid()
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'tp_counter_getppid_calls_total{collection="tp-counter"}' in metrics

    # an edit of the ConfigMap: one collection's constant changes
    edited = dict(cm["data"])
    edited["tp-counter.yaml"] = edited["tp-counter.yaml"].replace(
        "target_tgid: 0", f"target_tgid: {os.getpid()}"
    )
    manifests.write({**cm, "data": edited})
    assert next_status() == {"STATUS": "ready: 3 collections applied, 1 changed"}
    # a key removed from the ConfigMap: its collections are pruned (prune: true)
    manifests.write(
        {
            **cm,
            "data": {"tp-counter.yaml": edited["tp-counter.yaml"]},
            "binaryData": {"tp_counter.o": cm["binaryData"]["tp_counter.o"]},
        }
    )
    assert next_status() == {"STATUS": "ready: 1 collection applied, 2 changed"}
    assert sorted(p.name for p in (pin_dir / "root").iterdir() if not p.name.startswith("_")) == [
        "tp-counter"
    ]
    # a broken edit never reaches the kernel; the node reports not ready until it is fixed
    manifests.write({**cm, "data": {"tp-counter.yaml": "apiVersion: bpforch.dev/v1\n"}})
    assert next_status()["STATUS"].startswith("degraded: invalid manifest: ")
    with pytest.raises(urllib.error.HTTPError) as not_ready:
        urllib.request.urlopen(f"{base}/readyz", timeout=10)
    assert not_ready.value.code == 503
    manifests.write(cm)
    assert next_status() == {"STATUS": "ready: 3 collections applied, 3 changed"}
    assert sorted(e.name for e in (tmp_path / "manifests").iterdir()) == [
        (tmp_path / "manifests" / "..data").readlink().name,
        "..data",
        "shared-stats.yaml",
        "shared_owner.o",
        "shared_user.o",
        "tp-counter.yaml",
        "tp_counter.o",
    ]
    proc.terminate()
    assert proc.wait(30) == 0
    status = json.loads((tmp_path / "state" / "service.json").read_text())
    assert status["phase"] == "stopped" and status["invalid"] == 1
    # the cache worked in its volume: the objects parsed are there, and no warning
    assert any(p.name.startswith("spec-") for p in cache_dir.iterdir())
    assert "cache " not in (tmp_path / "daemon.log").read_text()
