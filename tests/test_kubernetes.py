"""No cluster runs here: check deploy/kubernetes against the real CLI and against itself (probes, volumes, labels)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fedstream.cli import build_parser
from fedstream.common.training.partition import parse_partition
from fedstream.server.transport.servicer import SERVICE

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
WORKLOAD_KINDS = ("StatefulSet", "Deployment", "Job")
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
TLS_FILES_OF_A_SERVER = {"ca.pem", "server.pem", "server.key"}


def load_objects() -> list[dict]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        objects += [o for o in yaml.safe_load_all((MANIFESTS / name).read_text()) if o]
    return objects


OBJECTS = load_objects()


def of_kind(*kinds: str) -> list[dict]:
    return [o for o in OBJECTS if o["kind"] in kinds]


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers() -> list[tuple[dict, dict]]:
    return [(w, c) for w in of_kind(*WORKLOAD_KINDS) for c in pod_spec(w)["containers"]]


def indexes(workload: dict) -> range:
    """The completion indexes a Job's pods get; a single pod (None) for the other workloads."""
    if workload["kind"] == "Job" and workload["spec"].get("completionMode") == "Indexed":
        return range(workload["spec"]["completions"])
    return range(1)


def expand(args: list[str], container: dict, index: int) -> list[str]:
    """Kubernetes' $(VAR) expansion of args from the container's env, as the kubelet does it (no shell)."""
    values = {}
    for var in container.get("env", []):
        if "value" in var:
            values[var["name"]] = var["value"]
        elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == INDEX_ANNOTATION:
            values[var["name"]] = str(index)

    def substitute(match: re.Match) -> str:
        assert match.group(1) in values, f"args use $({match.group(1)}), which the container's env does not declare"
        return values[match.group(1)]

    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", substitute, arg) for arg in args]


def commands(workload: dict, container: dict) -> list[list[str]]:
    """The command line of every pod the workload starts (one per completion index for an indexed Job)."""
    return [expand(container["args"], container, i) for i in indexes(workload)]


def flag(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def port_of(host_port: str) -> int:
    return int(host_port.rsplit(":", 1)[1])


def container_ports(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container.get("ports", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pods_selected_by(service: dict) -> list[dict]:
    selector = service["spec"]["selector"]
    return [w for w in of_kind(*WORKLOAD_KINDS) if matches(selector, w["spec"]["template"]["metadata"]["labels"])]


def secret_volume_files(workload: dict, mount_path: str) -> tuple[dict, set[str]]:
    """The Secret volume mounted at mount_path and the file names it projects."""
    spec = pod_spec(workload)
    mounts = [m for c in spec["containers"] for m in c.get("volumeMounts", []) if m["mountPath"] == mount_path]
    assert mounts, f"{name_of(workload)}: nothing is mounted at {mount_path}"
    volume = next(v for v in spec["volumes"] if v["name"] == mounts[0]["name"])
    assert "secret" in volume, f"{name_of(workload)}: {mount_path} is not a Secret volume"
    return volume["secret"], {item["path"] for item in volume["secret"].get("items", [])}


CONTAINERS = containers()
IDS = [f"{name_of(w)}/{c['name']}" for w, c in CONTAINERS]


def test_kustomization_lists_every_manifest_and_each_has_the_kinds_the_deployment_needs() -> None:
    listed = set(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    kinds = [o["kind"] for o in OBJECTS]
    for kind in ("StatefulSet", "Service", "Deployment", "Job"):
        assert kind in kinds, f"no {kind} in {MANIFESTS}"
    names = [name_of(o) for o in OBJECTS]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (its kustomize builds offline)")
def test_kubectl_kustomize_builds_the_same_objects() -> None:
    built = subprocess.run(["kubectl", "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    assert sorted(name_of(o) for o in yaml.safe_load_all(built.stdout) if o) == sorted(name_of(o) for o in OBJECTS)


@pytest.mark.parametrize(("workload", "container"), CONTAINERS, ids=IDS)
def test_every_container_command_parses_with_the_real_cli(workload: dict, container: dict) -> None:
    """Also the relay's: it fails until `fedstream relay` exists, by design."""
    assert "command" not in container, "the image's ENTRYPOINT is fedstream: give the subcommand in args"
    _parser, children = build_parser()
    for command in commands(workload, container):
        assert command[0] in children, f"{name_of(workload)}: `fedstream {command[0]}` is not a subcommand"
        args = children[command[0]].parse_args(command[1:])
        if command[0] in ("server", "client", "relay"):
            assert bool(args.tls_dir) != bool(args.insecure), f"{name_of(workload)}: give --tls-dir or --insecure"


@pytest.mark.parametrize(("workload", "container"), [(w, c) for w, c in CONTAINERS if c["args"][0] != "client"],
                         ids=[i for i, (_w, c) in zip(IDS, CONTAINERS) if c["args"][0] != "client"])
def test_probes_use_the_grpc_health_service_on_the_declared_plaintext_health_port(workload: dict,
                                                                                  container: dict) -> None:
    command = container["args"]
    ports = container_ports(container)
    health = flag(command, "--health-address")
    assert health is not None, f"{name_of(workload)}: no --health-address for the kubelet's grpc probe"
    assert ports.get("health") == port_of(health)
    assert ports.get("grpc") == port_of(flag(command, "--address"))
    for kind, service in (("readinessProbe", SERVICE), ("livenessProbe", "")):
        probe = container[kind]["grpc"]
        assert probe["port"] == ports["health"], f"{name_of(workload)} {kind} probes port {probe['port']}"
        assert probe.get("service", "") == service
    assert container["livenessProbe"].get("initialDelaySeconds", 0) > 0, "the task loads before the port opens"


@pytest.mark.parametrize(("workload", "container"), CONTAINERS, ids=IDS)
def test_every_mount_names_a_volume_and_secrets_are_read_only(workload: dict, container: dict) -> None:
    spec = pod_spec(workload)
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    assert not set(volumes) & claims, "a volume and a claim template share a name"
    for mount in container.get("volumeMounts", []):
        assert mount["name"] in set(volumes) | claims, f"{name_of(workload)}: mount {mount['name']} has no volume"
        if "secret" in volumes.get(mount["name"], {}):
            assert mount.get("readOnly") is True, f"{name_of(workload)}: Secret {mount['name']} is mounted writable"


@pytest.mark.parametrize(("workload", "container"), CONTAINERS, ids=IDS)
def test_each_tls_dir_holds_the_files_its_command_reads_and_no_key_it_does_not_need(workload: dict,
                                                                                    container: dict) -> None:
    for command in commands(workload, container):
        role = command[0]
        dirs = {"--tls-dir": TLS_FILES_OF_A_SERVER if role in ("server", "relay") else None,
                "--upstream-tls-dir": None}
        for option, needed in dirs.items():
            directory = flag(command, option)
            if directory is None:
                continue
            secret, files = secret_volume_files(workload, directory)
            if needed is None:
                client_id = flag(command, "--client-id")
                needed = {"ca.pem", f"{client_id}.pem", f"{client_id}.key"}
                assert "server.key" not in files, f"{name_of(workload)}: a client's {option} holds a server key"
            assert needed <= files, f"{name_of(workload)} {option} {directory}: missing {needed - files}"
            assert "ca.key" not in files, f"{name_of(workload)}: the CA's private key is mounted"
            assert secret.get("defaultMode", 0o644) & 0o007 == 0, "keys readable by any user in the container"


def test_the_coordinator_keeps_its_run_directory_on_its_persistent_volume() -> None:
    (coordinator,) = [w for w in of_kind("StatefulSet") if pod_spec(w)["containers"][0]["args"][0] == "server"]
    assert coordinator["spec"]["replicas"] == 1
    claims = {t["metadata"]["name"] for t in coordinator["spec"]["volumeClaimTemplates"]}
    container = pod_spec(coordinator)["containers"][0]
    run_dir = Path(flag(container["args"], "--run-dir"))
    on_claims = [Path(m["mountPath"]) for m in container["volumeMounts"] if m["name"] in claims]
    assert any(run_dir.is_relative_to(mount) for mount in on_claims), f"--run-dir {run_dir} is not on {claims}"


def test_services_and_workloads_select_each_other() -> None:
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    for workload in of_kind("StatefulSet", "Deployment"):
        selector = workload["spec"]["selector"]["matchLabels"]
        assert matches(selector, workload["spec"]["template"]["metadata"]["labels"]), name_of(workload)
    for statefulset in of_kind("StatefulSet"):
        assert statefulset["spec"]["serviceName"] in services
    for name, service in services.items():
        selected = pods_selected_by(service)
        assert [w["kind"] for w in selected] in (["StatefulSet"], ["Deployment"]), \
            f"Service {name} selects {[name_of(w) for w in selected]}; it must select one coordinator or relay"
        ports = container_ports(pod_spec(selected[0])["containers"][0])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name} targets undeclared port {port['targetPort']}"


def test_coordinator_service_names_the_grpc_and_dashboard_ports() -> None:
    (service,) = [s for s in of_kind("Service") if pods_selected_by(s)[0]["kind"] == "StatefulSet"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 8080, "dashboard": 8081}
    container = pod_spec(pods_selected_by(service)[0])["containers"][0]
    assert port_of(flag(container["args"], "--dashboard")) == 8081


def dialled(command: list[str]) -> str | None:
    return flag(command, "--server") if command[0] == "client" else flag(command, "--upstream")


@pytest.mark.parametrize(("workload", "container"), [(w, c) for w, c in CONTAINERS if dialled(c["args"])],
                         ids=[i for i, (_w, c) in zip(IDS, CONTAINERS) if dialled(c["args"])])
def test_clients_and_relays_dial_a_service_that_reaches_a_coordinator_or_relay(workload: dict,
                                                                               container: dict) -> None:
    host, port = dialled(container["args"]).rsplit(":", 1)
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    assert host in services, f"{name_of(workload)} dials {host}, which is no Service here"
    service_port = next(p for p in services[host]["spec"]["ports"] if p["port"] == int(port))
    (parent,) = pods_selected_by(services[host])
    parent_command = pod_spec(parent)["containers"][0]["args"]
    assert parent_command[0] in ("server", "relay")
    assert service_port["targetPort"] == "grpc"
    if container["args"][0] == "relay":
        assert float(flag(container["args"], "--round-timeout")) < float(flag(parent_command, "--round-timeout")), \
            "a relay's deadline must leave time for its upstream upload before the coordinator's"


def test_the_indexed_job_gives_each_pod_its_own_partition_of_n() -> None:
    seen: dict[int, set[int]] = {}
    for job in of_kind("Job"):
        spec = job["spec"]
        assert spec["completionMode"] == "Indexed"
        container = pod_spec(job)["containers"][0]
        partitions = [parse_partition(flag(c, "--partition")) for c in commands(job, container)]
        ids = [flag(c, "--client-id") for c in commands(job, container)]
        n = {total for _i, total in partitions}
        assert n == {spec["completions"]} and spec["parallelism"] == spec["completions"], \
            f"{name_of(job)}: completions {spec['completions']}, parallelism {spec['parallelism']}, --partition N {n}"
        assert sorted(i for i, _n in partitions) == list(range(spec["completions"]))
        assert len(set(ids)) == len(ids), f"{name_of(job)}: client ids repeat: {ids}"
        taken = seen.setdefault(spec["completions"], set())
        assert not taken & {i for i, _n in partitions}, f"{name_of(job)}: partitions overlap another Job's"
        taken |= {i for i, _n in partitions}


def test_relay_min_clients_fit_its_clients_and_the_coordinator_waits_for_no_more_children_than_exist() -> None:
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    children: dict[str, int] = {}
    for workload, container in CONTAINERS:
        for command in commands(workload, container):
            target = dialled(command)
            if target:
                (parent,) = pods_selected_by(services[target.rsplit(":", 1)[0]])
                children[name_of(parent)] = children.get(name_of(parent), 0) + 1
    for workload, container in CONTAINERS:
        if container["args"][0] in ("server", "relay"):
            have = children.get(name_of(workload), 0)
            for option in ("--min-clients", "--clients-per-round"):
                wanted = flag(container["args"], option)
                assert wanted is None or int(wanted) <= have, \
                    f"{name_of(workload)} {option} {wanted} but only {have} children dial it"


@pytest.mark.parametrize(("workload", "container"), CONTAINERS, ids=IDS)
def test_every_container_requests_cpu_and_memory_and_caps_memory(workload: dict, container: dict) -> None:
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"], name_of(workload)
    assert pod_spec(workload)["securityContext"]["runAsNonRoot"] is True


def test_client_job_shows_the_gpu_request_in_a_comment() -> None:
    (job,) = of_kind("Job")
    text = next(p.read_text() for p in MANIFESTS.glob("*.yaml") if f"name: {job['metadata']['name']}" in p.read_text())
    assert re.search(r"#\s*nvidia\.com/gpu: 1", text)
    assert "nvidia.com/gpu" not in str(job), "the GPU request is a comment: CPU clusters must schedule the Job"
