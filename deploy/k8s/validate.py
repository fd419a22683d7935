#!/usr/bin/env python3
"""Checks deploy/k8s without a cluster (ctest: deploy.k8s_manifests).

1. Every manifest validates strictly (unknown fields are errors) against the
   Kubernetes API schemas that kubernetes-validate (PyPI) carries.
2. The kustomization names every manifest.
3. The ConfigMap's flashcored.toml really configures the built daemon: it is
   loaded by `flashcored --config` (an unknown key or a bad value exits 2),
   with only the addresses and folders moved to scratch ones by flags, and
   the daemon serves (Redis unreachable is no error) and drains on SIGTERM.
4. The DaemonSet asks for a GPU, probes gRPC health on the daemon's port and
   annotates the metrics port the ConfigMap's metrics_listen names; the image
   sets no FLASHCORE_* setting that would override the ConfigMap; the systemd
   unit puts the tuning database where the ConfigMap does.

    python3 deploy/k8s/validate.py --daemon build/server/flashcored
"""
import argparse
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
DEPLOY = HERE.parent


def fail(message):
    print(f"validate.py: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--daemon", required=True, help="the built flashcored")
    parser.add_argument("--kubernetes-version", default="1.30.0")
    args = parser.parse_args()
    try:
        import kubernetes_validate
        import yaml
    except ImportError as e:
        fail(f"{e.name} is missing: pip install kubernetes-validate (./deploy/setup.sh --test "
             "installs it into the build's venv)")

    manifests = sorted(p for p in HERE.glob("*.yaml") if p.name != "kustomization.yaml")
    docs = {}
    for path in manifests:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            try:
                kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {e.message} at "
                     f"{'.'.join(str(p) for p in e.path)}")
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
            print(f"{path.name}: {doc['kind']}/{doc['metadata']['name']} valid "
                  f"(Kubernetes {args.kubernetes_version}, strict)")

    kustomization = yaml.safe_load((HERE / "kustomization.yaml").read_text())
    if sorted(kustomization["resources"]) != sorted(p.name for p in manifests):
        fail(f"kustomization.yaml lists {kustomization['resources']}, the folder has "
             f"{[p.name for p in manifests]}")

    import tomllib
    config_text = docs[("ConfigMap", "flashcored-config")]["data"]["flashcored.toml"]
    config = tomllib.loads(config_text)
    daemonset = docs[("DaemonSet", "flashcored")]
    pod = daemonset["spec"]["template"]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "flashcored")
    if container["resources"]["limits"].get("nvidia.com/gpu") != 1:
        fail("the DaemonSet's container must ask for one nvidia.com/gpu")
    grpc_port = int(config["listen_address"].rsplit(":", 1)[1])
    for probe in ("readinessProbe", "livenessProbe"):
        if container[probe].get("grpc", {}).get("port") != grpc_port:
            fail(f"{probe} must be a gRPC probe on {grpc_port}")
    metrics_port = config["metrics_listen"].rsplit(":", 1)[1]
    annotations = pod["metadata"]["annotations"]
    if annotations.get("prometheus.io/scrape") != "true" or \
            annotations.get("prometheus.io/port") != metrics_port:
        fail(f"the pod must be annotated for scraping on port {metrics_port}")
    if container["args"] != ["--config", "/etc/flashcore/flashcored.toml"]:
        fail("the daemon must read the ConfigMap's file")
    if any(e["name"].startswith("FLASHCORE_") for e in container.get("env", [])):
        fail("a FLASHCORE_* variable in the pod would override the ConfigMap")
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for line in dockerfile.splitlines():
        if line.startswith("ENV") and "FLASHCORE_" in line and "FLASHCORE_CONFIG=" not in line:
            fail(f"the image's '{line}' would override the ConfigMap")
    unit = (DEPLOY / "flashcored.service").read_text()
    if "Environment=XDG_STATE_HOME=/var/lib" not in unit or "StateDirectory=flashcore" not in unit:
        fail("the systemd unit must keep the tuning database in /var/lib/flashcore")
    if config.get("tuning_db") != "/var/lib/flashcore/tuning.db":
        fail("the ConfigMap's tuning_db must be /var/lib/flashcore/tuning.db, as the unit's")

    with tempfile.TemporaryDirectory() as scratch:
        scratch = pathlib.Path(scratch)
        (scratch / "flashcored.toml").write_text(config_text)
        command = [args.daemon, "--config", str(scratch / "flashcored.toml"),
                   "--listen", "127.0.0.1:0", "--port-file", str(scratch / "port"),
                   "--cache-dir", str(scratch / "cache"), "--tuning-db", str(scratch / "t.db"),
                   "--redis", "redis://127.0.0.1:1/0", "--metrics-listen", "127.0.0.1:0"]
        daemon = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        deadline = time.time() + 30
        while not (scratch / "port").exists() and daemon.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        if daemon.poll() is not None or not (scratch / "port").exists():
            daemon.kill()
            fail(f"flashcored did not start with the ConfigMap's config:\n{daemon.communicate()[0]}")
        daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=30)
        if daemon.returncode != 0:
            fail(f"flashcored exited {daemon.returncode} on SIGTERM:\n{out}")
        print("flashcored started from the ConfigMap's flashcored.toml and drained on SIGTERM")
    print("deploy/k8s: ok")


if __name__ == "__main__":
    main()
