#include "controller/children.h"

#include <cstdio>

#include <openssl/evp.h>
#include <openssl/rand.h>

namespace kvcache::op {
namespace {

constexpr int64_t kNodeUid = 65532;  // "nonroot" in distroless images
constexpr char kTokenDir[] = "/var/run/kvcache/cluster-token";
constexpr char kAuthDir[] = "/var/run/kvcache/auth";

Json Metadata(const KVCacheSpec& spec, const std::string& name, const std::string& component,
              int shard = -1) {
  return {{"name", name},
          {"namespace", spec.ns},
          {"labels", Labels(spec, component, shard)},
          {"ownerReferences", OwnerReferences(spec)}};
}

Json ToJson(const StringMap& map) {
  Json out = Json::object();
  for (const auto& [k, v] : map) out[k] = v;
  return out;
}

std::string Fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

Json HttpProbe(const char* path, int period, int failures, int timeout) {
  return {{"httpGet", {{"path", path}, {"port", "http"}, {"scheme", "HTTP"}}},
          {"periodSeconds", period},
          {"timeoutSeconds", timeout},
          {"failureThreshold", failures},
          {"successThreshold", 1}};
}

Json Affinity(const KVCacheSpec& spec, int shard) {
  if (!spec.pod.affinity.is_null()) return spec.pod.affinity;
  if (spec.pod.anti_affinity == "None") return nullptr;
  // Nodes of one shard on different hosts: losing a host then costs each shard at most one
  // node, so a replica survives its primary.
  Json term = {{"labelSelector", {{"matchLabels", SelectorLabels(spec, shard)}}},
               {"topologyKey", "kubernetes.io/hostname"}};
  if (spec.pod.anti_affinity == "Required") {
    return {{"podAntiAffinity", {{"requiredDuringSchedulingIgnoredDuringExecution", {term}}}}};
  }
  return {{"podAntiAffinity",
           {{"preferredDuringSchedulingIgnoredDuringExecution",
             {{{"weight", 100}, {"podAffinityTerm", term}}}}}}};
}

Json TopologySpread(const KVCacheSpec& spec, int shard) {
  if (!spec.pod.topology_spread.is_null()) return spec.pod.topology_spread;
  return {{{"maxSkew", 1},
           {"topologyKey", "topology.kubernetes.io/zone"},
           {"whenUnsatisfiable", "ScheduleAnyway"},
           {"labelSelector", {{"matchLabels", SelectorLabels(spec, shard)}}}}};
}

}  // namespace

Json Labels(const KVCacheSpec& spec, const std::string& component, int shard) {
  Json labels = {{"app.kubernetes.io/name", "kvcache"},
                 {"app.kubernetes.io/instance", spec.name},
                 {"app.kubernetes.io/managed-by", kFieldManager},
                 {"app.kubernetes.io/component", component},
                 {"app.kubernetes.io/part-of", "kvcache"}};
  if (shard >= 0) labels[kShardLabel] = std::to_string(shard);
  return labels;
}

Json SelectorLabels(const KVCacheSpec& spec, int shard) {
  Json labels = {{"app.kubernetes.io/name", "kvcache"},
                 {"app.kubernetes.io/instance", spec.name},
                 {"app.kubernetes.io/component", "node"}};
  if (shard >= 0) labels[kShardLabel] = std::to_string(shard);
  return labels;
}

std::string SelectorString(const KVCacheSpec& spec, int shard) {
  std::string out;
  const Json labels = SelectorLabels(spec, shard);
  for (const auto& [k, v] : labels.items()) {
    if (!out.empty()) out += ",";
    out += k + "=" + v.get<std::string>();
  }
  return out;
}

Json OwnerReferences(const KVCacheSpec& spec) {
  return Json::array({{{"apiVersion", kinds::kKVCache.ApiVersion()},
                       {"kind", kinds::kKVCache.kind},
                       {"name", spec.name},
                       {"uid", spec.uid},
                       {"controller", true},
                       {"blockOwnerDeletion", true}}});
}

Json DesiredTokenSecret(const KVCacheSpec& spec, const std::string& token) {
  return {{"apiVersion", "v1"},
          {"kind", "Secret"},
          {"metadata", Metadata(spec, TokenSecretName(spec), "cluster-token")},
          {"type", "Opaque"},
          {"data", {{"token", Base64Encode(token)}}}};
}

Json DesiredConfigMap(const KVCacheSpec& spec) {
  Json data = {{"KVCACHE_FSYNC", spec.persistence.fsync},
               {"KVCACHE_SNAPSHOT_INTERVAL_SECONDS",
                std::to_string(spec.persistence.snapshot_interval_seconds)},
               {"KVCACHE_MAX_MEMORY", spec.memory.limit},
               {"KVCACHE_EVICTION", spec.memory.eviction},
               {"KVCACHE_REPLICATION", spec.replication.sync ? "sync" : "async"},
               {"KVCACHE_MIN_ACKS", std::to_string(spec.replication.min_acks)},
               {"KVCACHE_MIGRATION_MAX_KEYS_PER_SECOND",
                std::to_string(spec.resharding.max_keys_per_second)},
               {"KVCACHE_SNAPSHOT_ON_SHUTDOWN", "true"},
               {"KVCACHE_LOG_FORMAT", "json"}};
  return {{"apiVersion", "v1"},
          {"kind", "ConfigMap"},
          {"metadata", Metadata(spec, ConfigMapName(spec), "config")},
          {"data", data}};
}

Json DesiredHeadlessService(const KVCacheSpec& spec) {
  return {{"apiVersion", "v1"},
          {"kind", "Service"},
          {"metadata", Metadata(spec, HeadlessServiceName(spec), "nodes")},
          {"spec",
           {{"clusterIP", "None"},
            // A node becomes ready only once it has a topology naming its peers by these DNS
            // names, so they must resolve before the pods are ready.
            {"publishNotReadyAddresses", true},
            {"selector", SelectorLabels(spec)},
            {"ports", {{{"name", "http"}, {"port", kNodePort}, {"targetPort", "http"},
                        {"protocol", "TCP"}}}}}}};
}

Json DesiredClientService(const KVCacheSpec& spec) {
  Json port = {{"name", "http"}, {"port", spec.service.port}, {"targetPort", "http"},
               {"protocol", "TCP"}};
  if (spec.service.node_port > 0 && spec.service.type != "ClusterIP") {
    port["nodePort"] = spec.service.node_port;
  }
  Json metadata = Metadata(spec, ClientServiceName(spec), "service");
  if (!spec.service.annotations.empty()) metadata["annotations"] = ToJson(spec.service.annotations);
  return {{"apiVersion", "v1"},
          {"kind", "Service"},
          {"metadata", metadata},
          {"spec", {{"type", spec.service.type}, {"selector", SelectorLabels(spec)},
                    {"ports", {port}}}}};
}

Json DesiredStatefulSet(const KVCacheSpec& spec, int shard, const std::string& config_hash) {
  Json pod_labels = Labels(spec, "node", shard);
  for (const auto& [k, v] : spec.pod.labels) {
    if (!pod_labels.contains(k)) pod_labels[k] = v;  // the operator's labels win
  }
  Json annotations = ToJson(spec.pod.annotations);
  annotations[kConfigHashAnnotation] = config_hash;

  Json env = {
      {{"name", "KVCACHE_NODE_NAME"},
       {"valueFrom", {{"fieldRef", {{"apiVersion", "v1"}, {"fieldPath", "metadata.name"}}}}}},
      {{"name", "KVCACHE_LISTEN"}, {"value", "0.0.0.0:" + std::to_string(kNodePort)}},
      {{"name", "KVCACHE_DATA_DIR"}, {"value", "/data"}},
      {{"name", "KVCACHE_CLUSTER_TOKEN_FILE"}, {"value", std::string(kTokenDir) + "/token"}}};
  Json mounts = {{{"name", "data"}, {"mountPath", "/data"}},
                 {{"name", "cluster-token"}, {"mountPath", kTokenDir}, {"readOnly", true}}};
  // 0444: the only process in the pod reads it; fsGroup does not reach secret files on every
  // runtime, so a group-only mode could lock the non-root node out of its own token.
  Json volumes = {{{"name", "cluster-token"},
                   {"secret", {{"secretName", TokenSecretName(spec)}, {"defaultMode", 0444}}}}};
  if (!spec.auth.secret_name.empty()) {
    env.push_back({{"name", "KVCACHE_AUTH_TOKEN_FILE"},
                   {"value", std::string(kAuthDir) + "/" + spec.auth.key}});
    mounts.push_back({{"name", "auth"}, {"mountPath", kAuthDir}, {"readOnly", true}});
    volumes.push_back({{"name", "auth"},
                       {"secret", {{"secretName", spec.auth.secret_name}, {"defaultMode", 0444}}}});
  }
  if (!spec.tls_secret.empty()) {
    mounts.push_back({{"name", "tls"}, {"mountPath", "/tls"}, {"readOnly", true}});
    volumes.push_back({{"name", "tls"},
                       {"secret", {{"secretName", spec.tls_secret}, {"defaultMode", 0444}}}});
  }

  Json container = {
      {"name", "node"},
      {"image", spec.image},
      {"imagePullPolicy", spec.image_pull_policy},
      {"ports", {{{"name", "http"}, {"containerPort", kNodePort}, {"protocol", "TCP"}}}},
      {"env", env},
      {"envFrom", {{{"configMapRef", {{"name", ConfigMapName(spec)}}}}}},
      {"resources", spec.resources},
      {"volumeMounts", mounts},
      // Recovery (snapshot + log replay) may take a while on a big volume: the startup probe
      // allows 5 minutes before liveness takes over.
      {"startupProbe", HttpProbe("/healthz", 2, 150, 2)},
      {"livenessProbe", HttpProbe("/healthz", 10, 3, 5)},
      {"readinessProbe", HttpProbe("/readyz", 5, 2, 2)},
      {"securityContext",
       {{"allowPrivilegeEscalation", false},
        {"readOnlyRootFilesystem", true},
        {"runAsNonRoot", true},
        {"capabilities", {{"drop", {"ALL"}}}}}}};

  Json pod_spec = {
      {"automountServiceAccountToken", false},
      {"enableServiceLinks", false},
      {"terminationGracePeriodSeconds", spec.pod.termination_grace_seconds},
      {"securityContext",
       {{"runAsNonRoot", true},
        {"runAsUser", kNodeUid},
        {"runAsGroup", kNodeUid},
        {"fsGroup", kNodeUid},
        {"seccompProfile", {{"type", "RuntimeDefault"}}}}},
      {"containers", {container}},
      {"volumes", volumes},
      {"topologySpreadConstraints", TopologySpread(spec, shard)}};
  if (Json affinity = Affinity(spec, shard); !affinity.is_null()) pod_spec["affinity"] = affinity;
  if (!spec.pod.tolerations.is_null()) pod_spec["tolerations"] = spec.pod.tolerations;
  if (!spec.pod.node_selector.is_null()) pod_spec["nodeSelector"] = spec.pod.node_selector;
  if (!spec.pod.priority_class.empty()) pod_spec["priorityClassName"] = spec.pod.priority_class;
  if (!spec.image_pull_secrets.empty()) {
    Json secrets = Json::array();
    for (const std::string& s : spec.image_pull_secrets) secrets.push_back({{"name", s}});
    pod_spec["imagePullSecrets"] = secrets;
  }

  Json claim_spec = {{"accessModes", {"ReadWriteOnce"}},
                     {"resources", {{"requests", {{"storage", spec.storage.size}}}}}};
  if (!spec.storage.storage_class.empty()) {
    claim_spec["storageClassName"] = spec.storage.storage_class;
  }

  return {
      {"apiVersion", "apps/v1"},
      {"kind", "StatefulSet"},
      {"metadata", Metadata(spec, StatefulSetName(spec, shard), "node", shard)},
      {"spec",
       {{"serviceName", HeadlessServiceName(spec)},
        {"replicas", spec.NodesPerShard()},
        // Every node must be running before the first topology can name them all; a node is
        // ready only after that, so OrderedReady would wait forever.
        {"podManagementPolicy", "Parallel"},
        // The operator rolls the pods itself (replicas first, a switchover before the
        // primary, gated on readiness and replication catch-up): the primary may be any
        // ordinal after a failover, which no partition of RollingUpdate can express.
        {"updateStrategy", {{"type", "OnDelete"}}},
        {"persistentVolumeClaimRetentionPolicy",
         {{"whenDeleted", "Retain"}, {"whenScaled", "Retain"}}},
        {"selector", {{"matchLabels", SelectorLabels(spec, shard)}}},
        {"template",
         {{"metadata", {{"labels", pod_labels}, {"annotations", annotations}}},
          {"spec", pod_spec}}},
        {"volumeClaimTemplates",
         {{{"apiVersion", "v1"},
           {"kind", "PersistentVolumeClaim"},
           {"metadata", {{"name", "data"}, {"labels", Labels(spec, "node", shard)}}},
           {"spec", claim_spec}}}}}}};
}

Json DesiredPodDisruptionBudget(const KVCacheSpec& spec, int shard) {
  return {{"apiVersion", "policy/v1"},
          {"kind", "PodDisruptionBudget"},
          {"metadata", Metadata(spec, StatefulSetName(spec, shard), "node", shard)},
          {"spec",
           {{"maxUnavailable", spec.pdb.max_unavailable},
            {"selector", {{"matchLabels", SelectorLabels(spec, shard)}}}}}};
}

Json DesiredIngress(const KVCacheSpec& spec) {
  Json metadata = Metadata(spec, ClientServiceName(spec), "ingress");
  if (!spec.ingress.annotations.empty()) metadata["annotations"] = ToJson(spec.ingress.annotations);
  Json rule = {{"host", spec.ingress.host},
               {"http",
                {{"paths",
                  {{{"path", spec.ingress.path},
                    {"pathType", "Prefix"},
                    {"backend",
                     {{"service",
                       {{"name", ClientServiceName(spec)},
                        {"port", {{"number", spec.service.port}}}}}}}}}}}}};
  Json ingress_spec = {{"rules", {rule}}};
  if (!spec.ingress.class_name.empty()) ingress_spec["ingressClassName"] = spec.ingress.class_name;
  if (!spec.ingress.tls_secret.empty()) {
    ingress_spec["tls"] = {{{"hosts", {spec.ingress.host}},
                            {"secretName", spec.ingress.tls_secret}}};
  }
  return {{"apiVersion", "networking.k8s.io/v1"},
          {"kind", "Ingress"},
          {"metadata", metadata},
          {"spec", ingress_spec}};
}

Json DesiredServiceMonitor(const KVCacheSpec& spec) {
  Json metadata = Metadata(spec, ClientServiceName(spec), "monitoring");
  for (const auto& [k, v] : spec.monitoring.service_monitor_labels) metadata["labels"][k] = v;
  // Scrape through the headless Service: every node, ready or not, by its own address.
  Json selector = Labels(spec, "nodes");
  selector.erase("app.kubernetes.io/part-of");
  selector.erase("app.kubernetes.io/managed-by");
  return {{"apiVersion", "monitoring.coreos.com/v1"},
          {"kind", "ServiceMonitor"},
          {"metadata", metadata},
          {"spec",
           {{"selector", {{"matchLabels", selector}}},
            {"endpoints",
             {{{"port", "http"}, {"path", "/metrics"}, {"interval", spec.monitoring.interval}}}}}}};
}

Json DesiredPrometheusRule(const KVCacheSpec& spec) {
  Json metadata = Metadata(spec, ClientServiceName(spec), "monitoring");
  for (const auto& [k, v] : spec.monitoring.prometheus_rule_labels) metadata["labels"][k] = v;
  const std::string sel = "namespace=\"" + spec.ns + "\",pod=~\"" + spec.name + "-[0-9]+-[0-9]+\"";
  auto rule = [&](const std::string& alert, const std::string& expr, const std::string& for_,
                  const std::string& severity, const std::string& summary) {
    return Json{{"alert", alert},
                {"expr", expr},
                {"for", for_},
                {"labels", {{"severity", severity}}},
                {"annotations", {{"summary", summary}}}};
  };
  Json rules = {
      rule("KVCacheNodeDown", "up{" + sel + "} == 0", "2m", "critical",
           "A kvcache node of " + spec.ns + "/" + spec.name + " is down"),
      rule("KVCacheNodesMissing",
           "count(up{" + sel + "} == 1) < " +
               std::to_string(spec.shards * spec.NodesPerShard()),
           "5m", "warning", "Fewer kvcache nodes answer than " + spec.ns + "/" + spec.name + " wants")};
  return {{"apiVersion", "monitoring.coreos.com/v1"},
          {"kind", "PrometheusRule"},
          {"metadata", metadata},
          {"spec", {{"groups", {{{"name", "kvcache-" + spec.name}, {"rules", rules}}}}}}};
}

std::string ConfigHash(const Json& config_map, const std::vector<std::string>& secret_versions) {
  std::string text = config_map.value("data", Json::object()).dump();
  for (const std::string& v : secret_versions) text += "|" + v;
  return Fnv1a(text);
}

bool ContainsDesired(const Json& live, const Json& desired) {
  if (desired.is_object()) {
    if (!live.is_object()) return false;
    for (const auto& [key, value] : desired.items()) {
      auto it = live.find(key);
      if (it == live.end()) {
        // An empty map or list the server drops on storage is still "present".
        if ((value.is_object() || value.is_array()) && value.empty()) continue;
        return false;
      }
      if (!ContainsDesired(*it, value)) return false;
    }
    return true;
  }
  if (desired.is_array()) {
    if (!live.is_array() || live.size() != desired.size()) return false;
    for (size_t i = 0; i < desired.size(); ++i) {
      if (!ContainsDesired(live[i], desired[i])) return false;
    }
    return true;
  }
  if (desired.is_number() && live.is_number()) {
    return desired.get<double>() == live.get<double>();
  }
  return live == desired;
}

std::string Base64Encode(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(n);
  return out;
}

std::string Base64Decode(const std::string& text) {
  if (text.size() % 4 != 0) return "";
  std::string out(3 * text.size() / 4, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) return "";
  // EVP_DecodeBlock counts the padding as zero bytes.
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = text.size() >= 2 && text[text.size() - 2] == '=' ? 2 : 1;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

std::string GenerateToken() {
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof(raw)) != 1) return "";
  std::string token = Base64Encode(std::string(reinterpret_cast<char*>(raw), sizeof(raw)));
  for (char& c : token) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  while (!token.empty() && token.back() == '=') token.pop_back();
  return token;
}

}  // namespace kvcache::op
