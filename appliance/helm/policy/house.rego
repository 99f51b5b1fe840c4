# House rules for what the Relay chart renders, one manifest at a time (input: a Kubernetes
# object). `deny` holds a message per breach; the chart's test
# (relay/tests/helm_chart.rs) wants none for every values file it ships.
package relay.house

import rego.v1

workload_kinds := {"DaemonSet", "Deployment", "StatefulSet", "Job"}

# What the relay's data plane needs instead of privileged (README, "On K3s nodes with Helm").
allowed_capabilities := {"BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE", "NET_BIND_SERVICE"}

# The node's bpffs (pins outlive the pod) and the relay's state directory (saved
# allocations for a hitless restart): nothing else of the node is mounted.
allowed_host_paths := {"/sys/fs/bpf", "/var/lib/relay"}

pod_spec := input.spec.template.spec if input.kind in workload_kinds

containers contains c if some c in pod_spec.containers

init_containers contains c if some c in pod_spec.initContainers

all_containers := containers | init_containers

security(c) := object.get(c, "securityContext", {})

deny contains msg if {
	some c in all_containers
	security(c).privileged == true
	msg := sprintf("%s/%s: container %s is privileged: grant capabilities instead", [input.kind, input.metadata.name, c.name])
}

deny contains msg if {
	some c in all_containers
	not "ALL" in object.get(security(c), ["capabilities", "drop"], [])
	msg := sprintf("%s/%s: container %s does not drop ALL capabilities", [input.kind, input.metadata.name, c.name])
}

deny contains msg if {
	some c in all_containers
	some cap in object.get(security(c), ["capabilities", "add"], [])
	not cap in allowed_capabilities
	msg := sprintf("%s/%s: container %s adds %s, not one the relay needs", [input.kind, input.metadata.name, c.name, cap])
}

deny contains msg if {
	some c in all_containers
	not security(c).privileged
	object.get(security(c), "allowPrivilegeEscalation", true) != false
	msg := sprintf("%s/%s: container %s may escalate privileges (allowPrivilegeEscalation is not false)", [input.kind, input.metadata.name, c.name])
}

deny contains msg if {
	some c in containers
	some probe in ["readinessProbe", "livenessProbe"]
	not c[probe]
	msg := sprintf("%s/%s: container %s has no %s", [input.kind, input.metadata.name, c.name, probe])
}

deny contains msg if {
	some c in all_containers
	some e in object.get(c, "env", [])
	e.valueFrom.secretKeyRef
	msg := sprintf("%s/%s: container %s takes secret %s in its environment: mount it as a file", [input.kind, input.metadata.name, c.name, e.name])
}

deny contains msg if {
	some c in all_containers
	some e in object.get(c, "envFrom", [])
	e.secretRef
	msg := sprintf("%s/%s: container %s takes a whole Secret in its environment: mount it as a file", [input.kind, input.metadata.name, c.name])
}

deny contains msg if {
	some v in object.get(pod_spec, "volumes", [])
	v.hostPath
	not v.hostPath.path in allowed_host_paths
	msg := sprintf("%s/%s: volume %s mounts %s of the node, which is not one of %v", [input.kind, input.metadata.name, v.name, v.hostPath.path, allowed_host_paths])
}

deny contains msg if {
	some v in object.get(pod_spec, "volumes", [])
	v.secret
	mode := object.get(v.secret, "defaultMode", 420)
	bits.and(mode, 63) != 0
	msg := sprintf("%s/%s: secret volume %s is readable by group or others (defaultMode %d): Relay refuses such files", [input.kind, input.metadata.name, v.name, mode])
}

# A secret written into relay.toml would sit in a ConfigMap, readable by whoever reads those.
deny contains msg if {
	input.kind == "ConfigMap"
	some key, text in input.data
	some line in split(text, "\n")
	regex.match(`^\s*(static-auth-secret|user)\s*=`, line)
	msg := sprintf("ConfigMap/%s: %s holds a secret (%s): use a Secret mounted as a file", [input.metadata.name, key, trim_space(split(line, "=")[0])])
}
