#include "controller/kvcache_spec.h"

#include <regex>
#include <set>

namespace kvcache::op {
namespace {

// Typed reads of optional fields: absent or null keeps the default; a wrong type or an
// out-of-range value is InvalidArgument naming the field ("spec.shards").
class Reader {
 public:
  explicit Reader(const Json& root) : root_(root) {}

  Status status() const { return status_; }

  const Json* Find(std::initializer_list<const char*> path) const {
    const Json* node = &root_;
    for (const char* key : path) {
      if (!node->is_object()) return nullptr;
      auto it = node->find(key);
      if (it == node->end() || it->is_null()) return nullptr;
      node = &*it;
    }
    return node;
  }

  void Int(std::initializer_list<const char*> path, int64_t min, int64_t max, auto* out) {
    const Json* v = Find(path);
    if (v == nullptr) return;
    if (!v->is_number_integer()) return Fail(path, "must be an integer");
    int64_t n = v->get<int64_t>();
    if (n < min || n > max) {
      return Fail(path, "must be between " + std::to_string(min) + " and " + std::to_string(max));
    }
    *out = static_cast<std::remove_pointer_t<decltype(out)>>(n);
  }
  void Bool(std::initializer_list<const char*> path, bool* out) {
    const Json* v = Find(path);
    if (v == nullptr) return;
    if (!v->is_boolean()) return Fail(path, "must be a boolean");
    *out = v->get<bool>();
  }
  void String(std::initializer_list<const char*> path, std::string* out,
              std::initializer_list<const char*> allowed = {}) {
    const Json* v = Find(path);
    if (v == nullptr) return;
    if (!v->is_string()) return Fail(path, "must be a string");
    std::string s = v->get<std::string>();
    if (allowed.size() > 0) {
      bool ok = false;
      std::string list;
      for (const char* a : allowed) {
        ok = ok || s == a;
        list += list.empty() ? a : std::string(", ") + a;
      }
      if (!ok) return Fail(path, "must be one of " + list);
    }
    *out = std::move(s);
  }
  void Map(std::initializer_list<const char*> path, StringMap* out) {
    const Json* v = Find(path);
    if (v == nullptr) return;
    if (!v->is_object()) return Fail(path, "must be a map of strings");
    for (const auto& [k, val] : v->items()) {
      if (!val.is_string()) return Fail(path, "value of \"" + k + "\" must be a string");
      (*out)[k] = val.get<std::string>();
    }
  }
  void Raw(std::initializer_list<const char*> path, Json* out, Json::value_t type) {
    const Json* v = Find(path);
    if (v == nullptr) return;
    if (v->type() != type) return Fail(path, "has the wrong type");
    *out = *v;
  }
  void Fail(std::initializer_list<const char*> path, const std::string& what) {
    if (!status_.ok()) return;
    std::string name;
    for (const char* key : path) name += name.empty() ? key : std::string(".") + key;
    status_ = InvalidArgumentError(name + " " + what);
  }

 private:
  const Json& root_;
  Status status_;
};

bool IsByteCount(const std::string& s) {
  static const std::regex kBytes("^[0-9]+(k|K|M|G|Ki|Mi|Gi|Ti)?$");
  return std::regex_match(s, kBytes);
}

bool IsQuantity(const std::string& s) {
  static const std::regex kQuantity("^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$");
  return std::regex_match(s, kQuantity);
}

}  // namespace

StatusOr<KVCacheSpec> ParseKVCacheSpec(const Json& object) {
  if (!object.is_object()) return InvalidArgumentError("KVCache is not a JSON object");
  KVCacheSpec spec;
  Reader r(object);
  r.String({"metadata", "name"}, &spec.name);
  r.String({"metadata", "namespace"}, &spec.ns);
  r.String({"metadata", "uid"}, &spec.uid);
  r.Int({"metadata", "generation"}, 0, INT64_MAX, &spec.generation);
  if (spec.name.empty()) return InvalidArgumentError("metadata.name is missing");
  if (const Json* a = r.Find({"metadata", "annotations", kPauseAnnotation}); a && a->is_string()) {
    spec.paused = a->get<std::string>() == "true";
  }
  spec.deleting = r.Find({"metadata", "deletionTimestamp"}) != nullptr;

  r.Int({"spec", "shards"}, 1, kMaxShards, &spec.shards);
  r.Int({"spec", "replicasPerShard"}, 0, 5, &spec.replicas_per_shard);
  r.String({"spec", "image"}, &spec.image);
  if (spec.image.empty()) r.Fail({"spec", "image"}, "must not be empty");
  r.String({"spec", "imagePullPolicy"}, &spec.image_pull_policy,
           {"Always", "IfNotPresent", "Never"});
  if (const Json* v = r.Find({"spec", "imagePullSecrets"})) {
    if (!v->is_array()) {
      r.Fail({"spec", "imagePullSecrets"}, "must be a list of names");
    } else {
      for (const Json& s : *v) {
        if (s.is_string()) spec.image_pull_secrets.push_back(s.get<std::string>());
      }
    }
  }
  r.Raw({"spec", "resources"}, &spec.resources, Json::value_t::object);

  r.String({"spec", "storage", "size"}, &spec.storage.size);
  if (!IsQuantity(spec.storage.size)) r.Fail({"spec", "storage", "size"}, "must be a quantity");
  r.String({"spec", "storage", "storageClassName"}, &spec.storage.storage_class);
  std::string reclaim = "Keep";
  r.String({"spec", "storage", "reclaimPolicy"}, &reclaim, {"Keep", "Delete"});
  spec.storage.delete_on_removal = reclaim == "Delete";

  r.String({"spec", "persistence", "fsync"}, &spec.persistence.fsync,
           {"always", "everysec", "no"});
  r.Int({"spec", "persistence", "snapshotIntervalSeconds"}, 10, 604800,
        &spec.persistence.snapshot_interval_seconds);
  r.String({"spec", "memory", "limit"}, &spec.memory.limit);
  if (!IsByteCount(spec.memory.limit)) {
    r.Fail({"spec", "memory", "limit"}, "must be bytes with an optional suffix (K M G Ki Mi Gi Ti)");
  }
  r.String({"spec", "memory", "eviction"}, &spec.memory.eviction, {"lru", "lfu", "noeviction"});

  std::string mode = "async";
  r.String({"spec", "replication", "mode"}, &mode, {"async", "sync"});
  spec.replication.sync = mode == "sync";
  r.Int({"spec", "replication", "minAcks"}, 1, 5, &spec.replication.min_acks);
  if (spec.replication.sync && spec.replication.min_acks > spec.replicas_per_shard) {
    r.Fail({"spec", "replication", "minAcks"}, "must be <= replicasPerShard in sync mode");
  }

  r.String({"spec", "auth", "secretName"}, &spec.auth.secret_name);
  r.String({"spec", "auth", "key"}, &spec.auth.key);
  r.String({"spec", "tls", "secretName"}, &spec.tls_secret);

  r.String({"spec", "service", "type"}, &spec.service.type, {"ClusterIP", "NodePort", "LoadBalancer"});
  r.Int({"spec", "service", "port"}, 1, 65535, &spec.service.port);
  r.Int({"spec", "service", "nodePort"}, 30000, 32767, &spec.service.node_port);
  r.Map({"spec", "service", "annotations"}, &spec.service.annotations);

  r.Bool({"spec", "ingress", "enabled"}, &spec.ingress.enabled);
  r.String({"spec", "ingress", "className"}, &spec.ingress.class_name);
  r.String({"spec", "ingress", "host"}, &spec.ingress.host);
  r.String({"spec", "ingress", "path"}, &spec.ingress.path);
  r.String({"spec", "ingress", "tlsSecretName"}, &spec.ingress.tls_secret);
  r.Map({"spec", "ingress", "annotations"}, &spec.ingress.annotations);
  if (spec.ingress.enabled && spec.ingress.host.empty()) {
    r.Fail({"spec", "ingress", "host"}, "is required when ingress.enabled");
  }

  r.Bool({"spec", "failover", "enabled"}, &spec.failover.enabled);
  r.Int({"spec", "failover", "timeoutSeconds"}, 1, 3600, &spec.failover.timeout_seconds);
  r.Int({"spec", "resharding", "maxKeysPerSecond"}, 0, 100000000,
        &spec.resharding.max_keys_per_second);

  r.String({"spec", "pod", "antiAffinity"}, &spec.pod.anti_affinity,
           {"Preferred", "Required", "None"});
  r.Raw({"spec", "pod", "affinity"}, &spec.pod.affinity, Json::value_t::object);
  r.Raw({"spec", "pod", "tolerations"}, &spec.pod.tolerations, Json::value_t::array);
  r.Raw({"spec", "pod", "nodeSelector"}, &spec.pod.node_selector, Json::value_t::object);
  r.Raw({"spec", "pod", "topologySpreadConstraints"}, &spec.pod.topology_spread,
        Json::value_t::array);
  r.String({"spec", "pod", "priorityClassName"}, &spec.pod.priority_class);
  r.Map({"spec", "pod", "annotations"}, &spec.pod.annotations);
  r.Map({"spec", "pod", "labels"}, &spec.pod.labels);
  r.Int({"spec", "pod", "terminationGracePeriodSeconds"}, 1, 3600,
        &spec.pod.termination_grace_seconds);

  r.Bool({"spec", "podDisruptionBudget", "enabled"}, &spec.pdb.enabled);
  r.Int({"spec", "podDisruptionBudget", "maxUnavailable"}, 0, 100, &spec.pdb.max_unavailable);

  r.Bool({"spec", "monitoring", "serviceMonitor", "enabled"}, &spec.monitoring.service_monitor);
  r.String({"spec", "monitoring", "serviceMonitor", "interval"}, &spec.monitoring.interval);
  r.Map({"spec", "monitoring", "serviceMonitor", "labels"},
        &spec.monitoring.service_monitor_labels);
  r.Bool({"spec", "monitoring", "prometheusRule", "enabled"}, &spec.monitoring.prometheus_rule);
  r.Map({"spec", "monitoring", "prometheusRule", "labels"},
        &spec.monitoring.prometheus_rule_labels);

  if (!r.status().ok()) return r.status();
  return spec;
}

std::string StatefulSetName(const KVCacheSpec& spec, int shard) {
  return spec.name + "-" + std::to_string(shard);
}
std::string PodName(const KVCacheSpec& spec, int shard, int ordinal) {
  return StatefulSetName(spec, shard) + "-" + std::to_string(ordinal);
}
std::string HeadlessServiceName(const KVCacheSpec& spec) { return spec.name + "-nodes"; }
std::string ClientServiceName(const KVCacheSpec& spec) { return spec.name; }
std::string ConfigMapName(const KVCacheSpec& spec) { return spec.name + "-config"; }
std::string TokenSecretName(const KVCacheSpec& spec) { return spec.name + "-cluster-token"; }

std::string PodAddress(const KVCacheSpec& spec, const std::string& pod_name) {
  return pod_name + "." + HeadlessServiceName(spec) + "." + spec.ns + ".svc:" +
         std::to_string(kNodePort);
}

std::string Endpoint(const KVCacheSpec& spec) {
  return ClientServiceName(spec) + "." + spec.ns + ".svc:" + std::to_string(spec.service.port);
}

bool ParsePodName(const KVCacheSpec& spec, const std::string& pod_name, int* shard, int* ordinal) {
  const std::string prefix = spec.name + "-";
  if (pod_name.rfind(prefix, 0) != 0) return false;
  std::string rest = pod_name.substr(prefix.size());
  size_t dash = rest.find('-');
  if (dash == std::string::npos || dash == 0 || dash + 1 == rest.size()) return false;
  auto digits = [](const std::string& s) {
    return !s.empty() && s.size() < 6 && s.find_first_not_of("0123456789") == std::string::npos;
  };
  std::string a = rest.substr(0, dash), b = rest.substr(dash + 1);
  if (!digits(a) || !digits(b)) return false;
  *shard = std::stoi(a);
  *ordinal = std::stoi(b);
  return true;
}

}  // namespace kvcache::op
