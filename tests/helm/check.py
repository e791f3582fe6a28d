#!/usr/bin/env python3
"""Renders and lints helm/orderguard with the Helm v4 SDK (helm-python-sdk, no helm binary),
validates every manifest with kubernetes-validate --strict against the oldest and newest
Kubernetes it knows, checks the objects whose schema it lacks (ServiceMonitor) field by field,
and the chart's promises: non-root, read-only root, dropped capabilities, probes, service links
off, the admin port apart from the ingress, secrets only from an existing Secret, a migration
hook, the dashboards for Grafana's sidecar, a schema that refuses a wrong type.

Usage: check.py CHART VALUES.yaml OUT.json — writes the production-like rendering (parsed
manifests) to OUT.json for the Rust test, which starts the real binary with its environment
and checks its brands folder. Prints one line per check; exits non-zero if any failed.
"""

import json
import os
import sys

import helm_python as helm
import kubernetes_validate
import yaml

FAILURES = []
REQUIRED = {"publicUrl": "https://pay.example.com", "existingSecret": "orderguard-secrets"}
OLDEST, NEWEST = "1.25.0", kubernetes_validate.latest_version()


def check(condition, message):
    if condition:
        print(f"ok   {message}")
    else:
        FAILURES.append(message)
        print(f"FAIL {message}")


def render(chart, values):
    manifests = chart.render(values, name="orderguard", namespace="shop", is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                objects.append(document)
    return objects, manifests


def by_kind(objects, kind, suffix=""):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    return found


def validate_all(objects, label):
    kinds = set()
    for obj in objects:
        for version in (OLDEST, NEWEST):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
                kinds.add(obj["kind"])
            except kubernetes_validate.SchemaNotFoundError:
                # Only the ServiceMonitor may lack a schema: its fields are checked below.
                check(obj["kind"] == "ServiceMonitor",
                      f"{label}: {obj['kind']} {obj['apiVersion']} has no schema on {version}, "
                      "and its fields are checked here")
            except kubernetes_validate.ValidationError as error:
                check(False, f"{label}: {obj['kind']} {obj['metadata']['name']} on {version}: "
                             f"{'.'.join(map(str, error.path))}: {error.message}")
    print(f"ok   {label}: {len(objects)} objects of {sorted(kinds)} valid on Kubernetes {OLDEST} and {NEWEST} (strict)")


def main():
    chart_dir, values_file, out = sys.argv[1], sys.argv[2], sys.argv[3]
    helm.disable_logging()
    chart = helm.Chart.load(chart_dir)
    production = yaml.safe_load(open(values_file))

    # Lint: no warnings or errors (info, such as a missing icon, is fine).
    for label, values in (("defaults", REQUIRED), ("production-like", production)):
        report = helm.lint(chart_dir, values, strict=True, kube_version=f"v{NEWEST}")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        check(not problems, f"helm lint --strict, {label} values: {problems}")

    # The schema refuses a wrong type, at install time.
    for wrong in ({"replicaCount": "three"}, {"autoscaling": {"enabled": "yes"}},
                  {"admin": {"port": 70000}}, {"brands": {"examples": ["nope"]}},
                  {"serviceMonitr": {"enabled": True}}):
        try:
            chart.validate_schema({**REQUIRED, **wrong})
            check(False, f"the schema refuses {wrong}")
        except helm.HelmValuesError as error:
            check(True, f"the schema refuses {wrong}: {str(error).splitlines()[0][:100]}")
    chart.validate_schema(production)
    # Required values missing fail the render, with a message saying what to set.
    for missing in ("existingSecret", "publicUrl"):
        values = {k: v for k, v in REQUIRED.items() if k != missing}
        try:
            chart.render(values, name="orderguard", namespace="shop", is_install=True)
            check(False, f"rendering without {missing} fails")
        except helm.HelmError as error:
            check(missing in str(error), f"rendering without {missing} fails: {str(error)[:120]}")

    for label, values in (("defaults", REQUIRED), ("production-like", production)):
        objects, manifests = render(chart, values)
        validate_all(objects, label)
        deployment = by_kind(objects, "Deployment")[0]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        security = container["securityContext"]
        check(pod["securityContext"]["runAsNonRoot"] and security["readOnlyRootFilesystem"]
              and security["capabilities"]["drop"] == ["ALL"]
              and not security["allowPrivilegeEscalation"],
              f"{label}: non-root, read-only root filesystem, every capability dropped")
        check(pod["enableServiceLinks"] is False, f"{label}: service links off")
        check(all(probe in container for probe in ("startupProbe", "livenessProbe", "readinessProbe"))
              and container["readinessProbe"]["httpGet"]["path"] == "/readyz"
              and container["livenessProbe"]["httpGet"]["path"] == "/healthz",
              f"{label}: startup, liveness (/healthz) and readiness (/readyz) probes")
        check(pod["terminationGracePeriodSeconds"] > 10,
              f"{label}: grace period ({pod['terminationGracePeriodSeconds']} s) longer than the drain (10 s)")
        check("limits" in container["resources"] and "requests" in container["resources"],
              f"{label}: resource requests and limits")
        env = {e["name"]: e.get("value") for e in container["env"]}
        check(not any(("SECRET" in k or "PASSWORD" in k or "KEY" in k or k.endswith("DATABASE__URL"))
                      for k in env),
              f"{label}: no secret inline in the environment ({sorted(env)})")
        check(container["envFrom"] == [{"secretRef": {"name": values["existingSecret"]}}],
              f"{label}: secrets from the existing Secret {values['existingSecret']}")
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        check(env.get("ORDERGUARD_HTTP__ADMIN_PORT") == str(ports["admin"]) and ports["http"] == 8080,
              f"{label}: the admin listener on its own container port {ports['admin']}")
        services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
        admin = services["orderguard-admin"]
        check([p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]
              and [p["targetPort"] for p in services["orderguard"]["spec"]["ports"]] == ["http"],
              f"{label}: an admin Service for the admin port, the main Service for http only")
        for ingress in by_kind(objects, "Ingress"):
            backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"]
                        for path in rule["http"]["paths"]]
            check(backends == [{"name": "orderguard", "port": {"name": "http"}}],
                  f"{label}: the ingress routes only to the http port, never to admin")
        hpa, pdb = by_kind(objects, "HorizontalPodAutoscaler"), by_kind(objects, "PodDisruptionBudget")
        check(len(hpa) == 1 and len(pdb) == 1, f"{label}: a HorizontalPodAutoscaler and a PodDisruptionBudget")
        check(hpa[0]["spec"]["minReplicas"] >= 3, f"{label}: at least 3 replicas ({hpa[0]['spec']['minReplicas']})")
        job = by_kind(objects, "Job", "-migrate")[0]
        check(job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
              and job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"],
              f"{label}: `orderguard migrate` as a pre-install/pre-upgrade hook Job")
        config = by_kind(objects, "ConfigMap", "-config")[0]
        check("orderguard.toml" in config["data"], f"{label}: orderguard.toml from a ConfigMap")
        dashboards = by_kind(objects, "ConfigMap", "-dashboards")[0]
        check(dashboards["metadata"]["labels"].get("grafana_dashboard") == "1"
              and sorted(dashboards["data"]) == ["brand-vs-market.json", "fraud-trends.json", "operations.json"]
              and all(dashboards["data"][name] == open(os.path.join(chart_dir, "dashboards", name)).read()
                      for name in dashboards["data"]),
              f"{label}: the dashboards of dashboards/, labelled for Grafana's sidecar")
        brands = by_kind(objects, "ConfigMap", "-brands")[0]
        items = [v for v in pod["volumes"] if v["name"] == "brands"][0]["configMap"]["items"]
        check(sorted(i["key"] for i in items) == sorted(brands["data"]),
              f"{label}: every brands key mapped to a path ({len(items)} files)")
        monitors = by_kind(objects, "ServiceMonitor")
        if label == "production-like":
            check(len(monitors) == 1 and len(by_kind(objects, "NetworkPolicy")) == 1,
                  f"{label}: a ServiceMonitor and a NetworkPolicy")
            monitor = monitors[0]
            selector = monitor["spec"]["selector"]["matchLabels"]
            check(monitor["apiVersion"] == "monitoring.coreos.com/v1"
                  and all(admin["metadata"]["labels"].get(k) == v for k, v in selector.items())
                  and not all(services["orderguard"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
                  and monitor["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "30s"}]
                  and monitor["metadata"]["labels"].get("release") == "kube-prometheus",
                  f"{label}: the ServiceMonitor (no schema: checked field by field) scrapes /metrics "
                  "on the admin Service only")
            policy = by_kind(objects, "NetworkPolicy")[0]
            rules = policy["spec"]["ingress"]
            check(rules[1]["ports"] == [{"port": "admin", "protocol": "TCP"}] and rules[1]["from"],
                  f"{label}: the admin port reachable only from the listed namespaces")
            notes = manifests.get("orderguard/templates/NOTES.txt", "")
            check("https://pay.nordwind-mobil.example" in notes and "/readyz" in notes,
                  f"{label}: NOTES.txt says where the service answers and how to check it")
            with open(out, "w") as f:
                json.dump(objects, f)
        else:
            check(not monitors, f"{label}: no ServiceMonitor unless asked for")
    print(f"{len(FAILURES)} failures")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
