// The desired children of a KVCache as pure functions of its spec: each returns the full object
// the operator server-side-applies (apiVersion, kind, metadata with app.kubernetes.io/* labels
// and a controller ownerReference, spec). Unit-tested without any HTTP.
//
//   <name>-cluster-token  Secret       the admin API's bearer token (generated once, kept)
//   <name>-config         ConfigMap    node settings as KVCACHE_* environment variables
//   <name>-nodes          Service      headless, publishes not-ready pods (stable DNS before
//                                      the nodes are ready: they need the topology for that)
//   <name>                Service      the client Service (ClusterIP / NodePort / LoadBalancer)
//   <name>-<shard>        StatefulSet  1 + replicasPerShard nodes, a PVC each at /data
//   <name>-<shard>        PodDisruptionBudget
//   <name>                Ingress, ServiceMonitor, PrometheusRule (optional)
//
// Thread safety: pure functions.
#pragma once

#include <string>

#include "controller/kvcache_spec.h"

namespace kvcache::op {

// app.kubernetes.io/{name,instance,managed-by,component,part-of} (+ kvcache.io/shard if >= 0).
Json Labels(const KVCacheSpec& spec, const std::string& component, int shard = -1);
// The labels that select this KVCache's node pods (all shards, or one).
Json SelectorLabels(const KVCacheSpec& spec, int shard = -1);
// "app.kubernetes.io/instance=demo,app.kubernetes.io/name=kvcache,..." for List calls.
std::string SelectorString(const KVCacheSpec& spec, int shard = -1);
// [{apiVersion, kind, name, uid, controller: true, blockOwnerDeletion: true}]
Json OwnerReferences(const KVCacheSpec& spec);

// `token` is the existing token (kept across reconciles) or a freshly generated one.
Json DesiredTokenSecret(const KVCacheSpec& spec, const std::string& token);
Json DesiredConfigMap(const KVCacheSpec& spec);
Json DesiredHeadlessService(const KVCacheSpec& spec);
Json DesiredClientService(const KVCacheSpec& spec);
// `config_hash` goes into the pod template's kvcache.io/config-hash annotation: a change of the
// ConfigMap or of a mounted Secret changes it and so rolls the pods.
Json DesiredStatefulSet(const KVCacheSpec& spec, int shard, const std::string& config_hash);
Json DesiredPodDisruptionBudget(const KVCacheSpec& spec, int shard);
Json DesiredIngress(const KVCacheSpec& spec);
Json DesiredServiceMonitor(const KVCacheSpec& spec);
Json DesiredPrometheusRule(const KVCacheSpec& spec);

// A stable hash (hex) over the ConfigMap's data and the given Secret versions
// (e.g. "token-secret:<resourceVersion>").
std::string ConfigHash(const Json& config_map, const std::vector<std::string>& secret_versions);

// True when every field of `desired` is present in `live` with the same value (objects are
// compared key by key, arrays element by element and of equal length, scalars exactly). The
// fields the API server adds (defaults, status, managedFields) are ignored, so a child that
// already matches is never written again.
bool ContainsDesired(const Json& live, const Json& desired);

// 32 random bytes, base64url without padding (for the cluster token). Uses OpenSSL's RNG.
std::string GenerateToken();
std::string Base64Encode(const std::string& bytes);
std::string Base64Decode(const std::string& text);  // "" on malformed input

}  // namespace kvcache::op
