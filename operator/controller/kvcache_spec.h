// KVCacheSpec: a KVCache object (crds/kvcache.io_kvcaches.yaml) parsed into typed values, with
// the CRD's defaults applied where a field is absent (the API server defaults them, but the
// operator must not depend on it: an older CRD or a test object may omit them), and the kinds
// and names of everything the operator creates for it.
//
// Thread safety: values and pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kube/kube_client.h"
#include "protocol/status.h"

namespace kvcache::op {

using Json = nlohmann::json;
using StringMap = std::map<std::string, std::string>;

// The REST collections the operator reads and writes.
namespace kinds {
inline const kube::ResourceRef kKVCache{"kvcache.io", "v1alpha1", "kvcaches", "KVCache"};
inline const kube::ResourceRef kSecret{"", "v1", "secrets", "Secret"};
inline const kube::ResourceRef kConfigMap{"", "v1", "configmaps", "ConfigMap"};
inline const kube::ResourceRef kService{"", "v1", "services", "Service"};
inline const kube::ResourceRef kPod{"", "v1", "pods", "Pod"};
inline const kube::ResourceRef kPvc{"", "v1", "persistentvolumeclaims", "PersistentVolumeClaim"};
inline const kube::ResourceRef kStatefulSet{"apps", "v1", "statefulsets", "StatefulSet"};
inline const kube::ResourceRef kPdb{"policy", "v1", "poddisruptionbudgets",
                                    "PodDisruptionBudget"};
inline const kube::ResourceRef kIngress{"networking.k8s.io", "v1", "ingresses", "Ingress"};
inline const kube::ResourceRef kServiceMonitor{"monitoring.coreos.com", "v1", "servicemonitors",
                                               "ServiceMonitor"};
inline const kube::ResourceRef kPrometheusRule{"monitoring.coreos.com", "v1", "prometheusrules",
                                               "PrometheusRule"};
inline const kube::ResourceRef kCrd{"apiextensions.k8s.io", "v1", "customresourcedefinitions",
                                    "CustomResourceDefinition", /*namespaced=*/false};
inline const kube::ResourceRef kEvent{"events.k8s.io", "v1", "events", "Event"};
}  // namespace kinds

inline constexpr char kFieldManager[] = "kvcache-operator";
inline constexpr char kFinalizer[] = "kvcache.io/finalizer";
inline constexpr char kPauseAnnotation[] = "kvcache.io/pause-reconcile";
inline constexpr char kConfigHashAnnotation[] = "kvcache.io/config-hash";
inline constexpr char kShardLabel[] = "kvcache.io/shard";
inline constexpr char kDefaultImage[] = "kvcache/kvcache-node:0.1.0";
inline constexpr int kNodePort = 8080;  // every node listens here
inline constexpr int kMaxShards = 128;

struct KVCacheSpec {
  // From metadata.
  std::string name;
  std::string ns;
  std::string uid;
  int64_t generation = 0;
  bool paused = false;     // annotation kvcache.io/pause-reconcile = "true"
  bool deleting = false;   // metadata.deletionTimestamp set

  int shards = 3;
  int replicas_per_shard = 1;
  std::string image = kDefaultImage;
  std::string image_pull_policy = "IfNotPresent";
  std::vector<std::string> image_pull_secrets;
  Json resources = {{"requests", {{"cpu", "100m"}, {"memory", "128Mi"}}}};

  struct Storage {
    std::string size = "1Gi";
    std::string storage_class;  // "" = the cluster's default class
    bool delete_on_removal = false;  // reclaimPolicy Delete
  } storage;
  struct Persistence {
    std::string fsync = "everysec";
    int snapshot_interval_seconds = 300;
  } persistence;
  struct Memory {
    std::string limit = "0";
    std::string eviction = "lru";
  } memory;
  struct Replication {
    bool sync = false;
    int min_acks = 1;
  } replication;
  struct SecretKey {
    std::string secret_name;  // "" = disabled
    std::string key = "token";
  } auth;
  std::string tls_secret;  // "" = none
  struct Service {
    std::string type = "ClusterIP";
    int port = 8080;
    int node_port = 0;  // 0 = picked by Kubernetes
    StringMap annotations;
  } service;
  struct Ingress {
    bool enabled = false;
    std::string class_name;
    std::string host;
    std::string path = "/";
    std::string tls_secret;
    StringMap annotations;
  } ingress;
  struct Failover {
    bool enabled = true;
    int timeout_seconds = 15;
  } failover;
  struct Resharding {
    int64_t max_keys_per_second = 0;  // per moving source; 0 = unthrottled
  } resharding;
  struct Pod {
    std::string anti_affinity = "Preferred";  // Preferred | Required | None
    Json affinity;                            // null = built-in
    Json tolerations;                         // null or array
    Json node_selector;                       // null or object
    Json topology_spread;                     // null = built-in zone spread
    std::string priority_class;
    StringMap annotations;
    StringMap labels;
    int64_t termination_grace_seconds = 30;
  } pod;
  struct Pdb {
    bool enabled = true;
    int max_unavailable = 1;
  } pdb;
  struct Monitoring {
    bool service_monitor = false;
    std::string interval = "30s";
    StringMap service_monitor_labels;
    bool prometheus_rule = false;
    StringMap prometheus_rule_labels;
  } monitoring;

  int NodesPerShard() const { return 1 + replicas_per_shard; }
};

// Parses a KVCache object. InvalidArgument naming the field when a value has the wrong type or
// is outside the CRD's bounds (the API server normally refuses those first).
StatusOr<KVCacheSpec> ParseKVCacheSpec(const Json& object);

// Names of the children, all derived from the KVCache's name.
std::string StatefulSetName(const KVCacheSpec& spec, int shard);  // <name>-<shard>
std::string PodName(const KVCacheSpec& spec, int shard, int ordinal);  // <name>-<shard>-<ordinal>
std::string HeadlessServiceName(const KVCacheSpec& spec);        // <name>-nodes
std::string ClientServiceName(const KVCacheSpec& spec);          // <name>
std::string ConfigMapName(const KVCacheSpec& spec);              // <name>-config
std::string TokenSecretName(const KVCacheSpec& spec);            // <name>-cluster-token
// "<pod>.<name>-nodes.<ns>.svc:8080": the member address in the topology.
std::string PodAddress(const KVCacheSpec& spec, const std::string& pod_name);
// "<name>.<ns>.svc:<service.port>".
std::string Endpoint(const KVCacheSpec& spec);
// Parses "<name>-<shard>-<ordinal>" of this KVCache; false if the pod name is not one of ours.
bool ParsePodName(const KVCacheSpec& spec, const std::string& pod_name, int* shard, int* ordinal);

}  // namespace kvcache::op
