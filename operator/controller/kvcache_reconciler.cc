#include "controller/kvcache_reconciler.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <map>
#include <set>
#include <thread>

#include "controller/children.h"

namespace kvcache::op {
namespace {

using protocol::NodeStatus;
using std::chrono::milliseconds;

// RFC 3339 with milliseconds: a failover timer stored in whole seconds would fire up to a
// second early after an operator restart (the stored start rounded down).
std::string FormatTime(std::chrono::system_clock::time_point t) {
  auto ms = std::chrono::time_point_cast<std::chrono::milliseconds>(t);
  std::time_t secs = std::chrono::system_clock::to_time_t(ms);
  if (ms < std::chrono::system_clock::from_time_t(secs)) --secs;  // before 1970: floor
  int millis = static_cast<int>(
      (ms - std::chrono::system_clock::from_time_t(secs)).count());
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[40];
  size_t n = std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  std::snprintf(buf + n, sizeof(buf) - n, ".%03dZ", millis);
  return buf;
}

// Reads FormatTime's output and the whole-second form earlier operators wrote.
std::optional<std::chrono::system_clock::time_point> ParseTime(const std::string& text) {
  std::tm tm{};
  int millis = 0;
  int consumed = 0;
  if (std::sscanf(text.c_str(), "%d-%d-%dT%d:%d:%d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                  &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &consumed) != 6) {
    return std::nullopt;
  }
  if (text[consumed] == '.' && std::sscanf(text.c_str() + consumed, ".%3d", &millis) != 1) {
    return std::nullopt;
  }
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  return std::chrono::system_clock::from_time_t(timegm(&tm)) + std::chrono::milliseconds(millis);
}

// "1Gi", "500M", "1073741824" -> bytes; nullopt when it cannot tell (then sizes are compared
// as text).
std::optional<double> QuantityBytes(const std::string& q) {
  static const std::pair<const char*, double> kSuffixes[] = {
      {"Ki", 1024.0}, {"Mi", 1048576.0}, {"Gi", 1073741824.0}, {"Ti", 1099511627776.0},
      {"Pi", 1125899906842624.0}, {"k", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}, {"P", 1e15}};
  size_t digits = q.find_first_not_of("0123456789.");
  if (digits == 0) return std::nullopt;
  double value = std::stod(q.substr(0, digits));
  if (digits == std::string::npos) return value;
  std::string suffix = q.substr(digits);
  for (const auto& [name, mult] : kSuffixes) {
    if (suffix == name) return value * mult;
  }
  return std::nullopt;
}

std::string StringAt(const Json& j, const Json::json_pointer& p) {
  if (!j.contains(p)) return "";
  const Json& v = j.at(p);
  return v.is_string() ? v.get<std::string>() : "";
}

// The shard a child (StatefulSet, PVC) carries in its kvcache.io/shard label; -1 without one.
int ShardOf(const Json& child) {
  std::string label = StringAt(child, "/metadata/labels/kvcache.io~1shard"_json_pointer);
  return label.empty() ? -1 : std::atoi(label.c_str());
}

// Shards 0..spec.shards-1 missing from `layout` join it owning nothing; moves fill them.
void AddMissingShards(const KVCacheSpec& spec, std::map<int, ShardLayout>* layout) {
  for (int id = 0; id < spec.shards; ++id) {
    if (!layout->count(id)) (*layout)[id] = {id, {}, PodName(spec, id, 0)};
  }
}

struct PodInfo {
  std::string name;
  std::string ip;
  bool running = false;  // Running, has an IP, not being deleted
  bool ready = false;
  std::string revision;  // controller-revision-hash: which StatefulSet revision it runs
  int64_t restarts = 0;  // container restarts: a not-ready pod that never restarted is starting
};

// The conditions this reconciler owns.
struct Condition {
  std::string type;
  bool status = false;
  std::string reason;
  std::string message;
};

}  // namespace

// Everything one reconcile pass knows and decides. Built from the KVCache's status at the
// start, written back to it at the end.
struct KVCacheReconciler::Pass {
  std::string ns, name;
  Json object;       // the KVCache as read
  protocol::AdminClient* admin = nullptr;  // this KVCache's nodes (set once the token is known)
  Json old_status;   // its status as read
  KVCacheSpec spec;
  Status spec_error;  // InvalidArgument when the spec could not be used

  // Persistent state (status): the slot layout and primaries, the topology epoch and hash.
  std::map<int, ShardLayout> layout;
  std::map<int, std::string> primary_not_ready_since;
  uint64_t epoch = 0;
  std::string topology_hash;
  Json failover;    // status.failover or null
  Json resharding;  // status.resharding or null
  std::string config_hash;

  // Observed this pass.
  std::map<std::string, PodInfo> pods;
  std::map<std::string, NodeStatus> nodes;  // pods whose admin API answered
  std::map<int, Json> statefulsets;          // live, by shard
  uint64_t forced_epoch = 0;                 // a promotion already used this epoch
  bool topology_behind = false;              // some node has not got the current epoch
  bool hold_topology = false;                // push nothing this pass (AdoptNodeLayout)
  bool rolling = false;                      // a StatefulSet is rolling out a new revision

  // Outcome.
  std::vector<std::string> degraded;     // reasons
  std::vector<std::string> progressing;  // reasons
  std::string degraded_message, progressing_message;
  std::optional<milliseconds> requeue;
  Status error;

  void Requeue(milliseconds after) {
    if (!requeue || after < *requeue) requeue = after;
  }
  void Progress(const std::string& reason, const std::string& message) {
    if (progressing.empty()) progressing_message = message;
    progressing.push_back(reason);
  }
  void Degrade(const std::string& reason, const std::string& message) {
    if (degraded.empty()) degraded_message = message;
    degraded.push_back(reason);
  }
  std::string NodeAddr(const std::string& pod) const {
    auto it = pods.find(pod);
    if (it != pods.end() && !it->second.ip.empty()) {
      return it->second.ip + ":" + std::to_string(kNodePort);
    }
    return PodAddress(spec, pod);
  }
  bool PodReady(const std::string& pod) const {
    auto it = pods.find(pod);
    return it != pods.end() && it->second.ready;
  }
  std::map<int, std::vector<SlotRange>> Slots() const {
    std::map<int, std::vector<SlotRange>> out;
    for (const auto& [id, l] : layout) out[id] = l.slots;
    return out;
  }
  std::vector<ShardLayout> Layouts() const {
    std::vector<ShardLayout> out;
    for (const auto& [id, l] : layout) out.push_back(l);
    return out;
  }
  uint64_t MaxNodeEpoch() const {
    uint64_t e = epoch;
    for (const auto& [n, s] : nodes) e = std::max({e, s.epoch, s.fence_epoch});
    return e;
  }
};

KVCacheReconciler::KVCacheReconciler(kube::KubeClient& kube, protocol::AdminClient& admin,
                                     kube::Clock& clock, OperatorMetrics& metrics, EventFn events,
                                     Options options)
    : KVCacheReconciler(
          kube, [&admin](const KVCacheSpec&, const std::string&) -> protocol::AdminClient& {
            return admin;
          },
          clock, metrics, std::move(events), options) {}

KVCacheReconciler::KVCacheReconciler(kube::KubeClient& kube, AdminClientFor admin_for,
                                     kube::Clock& clock, OperatorMetrics& metrics, EventFn events,
                                     Options options)
    : kube_(kube),
      admin_for_(std::move(admin_for)),
      clock_(clock),
      metrics_(metrics),
      events_(std::move(events)),
      options_(options) {}

void KVCacheReconciler::Event(Pass& pass, std::string_view type, std::string_view reason,
                              const std::string& msg) {
  if (events_) events_(pass.object, type, reason, msg);
}

ReconcileResult KVCacheReconciler::Reconcile(std::string_view ns, std::string_view name) {
  auto start = clock_.Now();
  Pass pass;
  pass.ns = ns;
  pass.name = name;
  ReconcileResult result = RunPass(pass);
  double seconds = std::chrono::duration<double>(clock_.Now() - start).count();
  metrics_.ReconcileDone(result.status.ok(), result.requeue_after.has_value(), seconds);
  return result;
}

ReconcileResult KVCacheReconciler::RunPass(Pass& pass) {
  StatusOr<Json> object = kube_.Get(kinds::kKVCache, pass.ns, pass.name);
  if (!object.ok()) {
    if (object.status().code() == StatusCode::kNotFound) {
      metrics_.ForgetKVCache(pass.ns, pass.name);
      return {Status::Ok(), std::nullopt};
    }
    return {object.status(), std::nullopt};
  }
  pass.object = *object;
  pass.old_status = pass.object.value("status", Json::object());
  StatusOr<KVCacheSpec> spec = ParseKVCacheSpec(pass.object);
  if (!spec.ok()) {
    // Never half-apply a spec the operator cannot read: say why and wait for a fix.
    pass.spec.name = std::string(pass.name);
    pass.spec.ns = std::string(pass.ns);
    pass.spec.generation = pass.object["metadata"].value("generation", int64_t{0});
    pass.spec_error = spec.status();
    Event(pass, "Warning", "InvalidSpec", spec.status().message());
    Status st = WriteStatus(pass);
    return {st, st.code() == StatusCode::kConflict ? std::optional(milliseconds(0)) : std::nullopt};
  }
  pass.spec = *std::move(spec);
  if (pass.spec.ns.empty()) pass.spec.ns = std::string(pass.ns);

  // Persistent state from status.
  const Json& st = pass.old_status;
  pass.epoch = st.value("topologyEpoch", uint64_t{0});
  pass.topology_hash = st.value("topologyHash", std::string());
  pass.failover = st.value("failover", Json());
  pass.resharding = st.value("resharding", Json());
  if (st.contains("shards") && st["shards"].is_array()) {
    for (const Json& s : st["shards"]) {
      ShardLayout l;
      l.id = s.value("id", -1);
      auto slots = ParseSlots(s.value("slots", std::string()));
      if (l.id < 0 || !slots.ok()) continue;
      l.slots = *slots;
      l.primary = s.value("primary", std::string());
      pass.layout[l.id] = l;
      std::string since = s.value("primaryNotReadySince", std::string());
      if (!since.empty()) pass.primary_not_ready_since[l.id] = since;
    }
    int owned = 0;
    for (const auto& [id, l] : pass.layout) owned += SlotCount(l.slots);
    if (owned != protocol::kSlotCount) pass.layout.clear();  // unusable: start over below
  }
  if (pass.layout.empty()) {
    for (const auto& [id, slots] : InitialSlots(pass.spec.shards)) {
      pass.layout[id] = {id, slots, PodName(pass.spec, id, 0)};
    }
  }
  AddMissingShards(pass.spec, &pass.layout);
  for (auto& [id, l] : pass.layout) {
    if (l.primary.empty()) l.primary = PodName(pass.spec, id, 0);
  }

  if (pass.spec.paused) {
    Status s = WriteStatus(pass);
    return {s, std::nullopt};
  }
  if (pass.spec.deleting) return Finalize(pass);

  // The finalizer exists only for what the garbage collector cannot do: deleting the claims.
  {
    Json finalizers = pass.object["metadata"].value("finalizers", Json::array());
    bool has = std::find(finalizers.begin(), finalizers.end(), kFinalizer) != finalizers.end();
    if (has != pass.spec.storage.delete_on_removal) {
      Json next = Json::array();
      for (const Json& f : finalizers) {
        if (f != kFinalizer) next.push_back(f);
      }
      if (!has) next.push_back(kFinalizer);
      Json patch = {{"metadata",
                     {{"finalizers", next},
                      {"resourceVersion", pass.object["metadata"]["resourceVersion"]}}}};
      StatusOr<Json> patched = kube_.Patch(kinds::kKVCache, pass.ns, pass.name,
                                           kube::PatchType::kMerge, patch);
      metrics_.Write("patch");
      if (!patched.ok()) return {patched.status(), milliseconds(0)};
      pass.object = *patched;
    }
  }

  if (Status s = ApplyChildren(pass); !s.ok()) {
    return {s, s.code() == StatusCode::kConflict ? std::optional(milliseconds(0)) : std::nullopt};
  }
  if (Status s = ReadPodsAndNodes(pass); !s.ok()) return {s, std::nullopt};
  AdoptNodeLayout(pass);
  StepFailover(pass);
  StepResharding(pass);
  StepReplicaScaleIn(pass);
  StepRollout(pass);
  StepTopology(pass);
  if (Status s = WriteStatus(pass); !s.ok()) {
    return {s, s.code() == StatusCode::kConflict ? std::optional(milliseconds(0)) : std::nullopt};
  }
  if (!pass.error.ok()) return {pass.error, std::nullopt};
  return {Status::Ok(), pass.requeue ? pass.requeue : std::optional(options_.resync_interval)};
}

Status KVCacheReconciler::Apply(Pass& pass, const kube::ResourceRef& ref, const Json& desired) {
  const std::string name = desired["metadata"]["name"].get<std::string>();
  StatusOr<Json> live = kube_.Get(ref, pass.ns, name);
  if (live.ok() && ContainsDesired(*live, desired)) return Status::Ok();
  if (!live.ok() && live.status().code() != StatusCode::kNotFound) return live.status();
  kube::PatchOptions options;
  options.force = true;  // the operator owns every field it sets on its children
  StatusOr<Json> applied = kube_.Patch(ref, pass.ns, name, kube::PatchType::kApply, desired, options);
  metrics_.Write("apply");
  if (!applied.ok()) return applied.status();
  if (!live.ok()) Event(pass, "Normal", "Created", "Created " + ref.kind + " " + name);
  return Status::Ok();
}

Status KVCacheReconciler::DeleteIfPresent(Pass& pass, const kube::ResourceRef& ref,
                                          const std::string& name) {
  StatusOr<Json> live = kube_.Get(ref, pass.ns, name);
  if (!live.ok()) {
    return live.status().code() == StatusCode::kNotFound ? Status::Ok() : live.status();
  }
  // Only delete what this KVCache controls.
  bool ours = false;
  for (const Json& o : live->value("/metadata/ownerReferences"_json_pointer, Json::array())) {
    ours = ours || o.value("uid", "") == pass.spec.uid;
  }
  if (!ours) return Status::Ok();
  Status s = kube_.Delete(ref, pass.ns, name);
  metrics_.Write("delete");
  if (s.code() == StatusCode::kNotFound) return Status::Ok();
  if (s.ok()) Event(pass, "Normal", "Deleted", "Deleted " + ref.kind + " " + name);
  return s;
}

Status KVCacheReconciler::ApplyChildren(Pass& pass) {
  const KVCacheSpec& spec = pass.spec;

  // The cluster token is generated once and kept: rotating it means deleting the Secret.
  std::string token;
  StatusOr<Json> secret = kube_.Get(kinds::kSecret, pass.ns, TokenSecretName(spec));
  if (secret.ok()) token = Base64Decode(StringAt(*secret, "/data/token"_json_pointer));
  else if (secret.status().code() != StatusCode::kNotFound) return secret.status();
  if (token.empty()) token = GenerateToken();
  if (token.empty()) return InternalError("could not generate a cluster token");
  if (Status s = Apply(pass, kinds::kSecret, DesiredTokenSecret(spec, token)); !s.ok()) return s;
  pass.admin = &admin_for_(spec, token);

  Json config_map = DesiredConfigMap(spec);
  if (Status s = Apply(pass, kinds::kConfigMap, config_map); !s.ok()) return s;
  if (Status s = Apply(pass, kinds::kService, DesiredHeadlessService(spec)); !s.ok()) return s;
  if (Status s = Apply(pass, kinds::kService, DesiredClientService(spec)); !s.ok()) return s;

  // Secret contents roll the pods through the config hash (rotation).
  std::vector<std::string> versions = {"cluster-token:" + Base64Encode(token)};
  for (const std::string& user_secret : {spec.auth.secret_name, spec.tls_secret}) {
    if (user_secret.empty()) continue;
    StatusOr<Json> s = kube_.Get(kinds::kSecret, pass.ns, user_secret);
    if (s.ok()) {
      versions.push_back(user_secret + ":" + s->value("data", Json::object()).dump());
    } else if (s.status().code() == StatusCode::kNotFound) {
      pass.Degrade("SecretMissing", "Secret " + user_secret + " does not exist");
      pass.Requeue(options_.progress_interval);
    } else {
      return s.status();
    }
  }
  pass.config_hash = ConfigHash(config_map, versions);

  // StatefulSets and PDBs: shards 0..spec.shards-1, plus shards that still own slots (they are
  // drained by moves before they go).
  std::set<int> keep;
  for (const auto& [id, l] : pass.layout) keep.insert(id);
  for (int id : keep) {
    Json desired = DesiredStatefulSet(spec, id, pass.config_hash);
    StatusOr<Json> live = kube_.Get(kinds::kStatefulSet, pass.ns, StatefulSetName(spec, id));
    if (live.ok()) {
      // volumeClaimTemplates are immutable: keep the live size and class; claims grow below.
      Json& vct = desired["spec"]["volumeClaimTemplates"][0]["spec"];
      std::string live_size =
          StringAt(*live, "/spec/volumeClaimTemplates/0/spec/resources/requests/storage"_json_pointer);
      if (!live_size.empty()) vct["resources"]["requests"]["storage"] = live_size;
      std::string live_class =
          StringAt(*live, "/spec/volumeClaimTemplates/0/spec/storageClassName"_json_pointer);
      if (!live_class.empty()) vct["storageClassName"] = live_class;
      else vct.erase("storageClassName");
    } else if (live.status().code() != StatusCode::kNotFound) {
      return live.status();
    }
    // Scale-in of replicasPerShard: a primary among the ordinals going away keeps its pod
    // until it has handed its role over (StepReplicaScaleIn).
    int shard = -1, primary_ordinal = -1;
    if (ParsePodName(spec, pass.layout.at(id).primary, &shard, &primary_ordinal) &&
        primary_ordinal >= spec.NodesPerShard()) {
      desired["spec"]["replicas"] = primary_ordinal + 1;
    }
    if (Status s = Apply(pass, kinds::kStatefulSet, desired); !s.ok()) return s;
    if (live.ok()) pass.statefulsets[id] = *live;
    if (spec.pdb.enabled) {
      if (Status s = Apply(pass, kinds::kPdb, DesiredPodDisruptionBudget(spec, id)); !s.ok()) {
        return s;
      }
    } else if (Status s = DeleteIfPresent(pass, kinds::kPdb, StatefulSetName(spec, id)); !s.ok()) {
      return s;
    }
  }

  // Drained shards: their StatefulSet and PDB go once no topology names them.
  kube::ListOptions by_instance;
  by_instance.label_selector = "app.kubernetes.io/instance=" + spec.name +
                               ",app.kubernetes.io/name=kvcache";
  StatusOr<kube::ListResult> sets = kube_.List(kinds::kStatefulSet, pass.ns, by_instance);
  if (!sets.ok()) return sets.status();
  std::set<int> with_statefulset;
  for (const Json& sts : sets->items) {
    int shard = ShardOf(sts);
    with_statefulset.insert(shard);
    if (shard < 0 || keep.count(shard)) continue;
    std::string sts_name = sts["metadata"]["name"].get<std::string>();
    if (Status s = DeleteIfPresent(pass, kinds::kStatefulSet, sts_name); !s.ok()) return s;
    if (Status s = DeleteIfPresent(pass, kinds::kPdb, sts_name); !s.ok()) return s;
    with_statefulset.erase(shard);  // its claims go below (kept until its pods are gone)
  }

  // Optional children.
  if (spec.ingress.enabled) {
    if (Status s = Apply(pass, kinds::kIngress, DesiredIngress(spec)); !s.ok()) return s;
  } else if (Status s = DeleteIfPresent(pass, kinds::kIngress, ClientServiceName(spec)); !s.ok()) {
    return s;
  }
  struct Optional {
    bool enabled;
    const kube::ResourceRef& ref;
    const char* crd;
    Json (*desired)(const KVCacheSpec&);
  };
  for (const Optional& o :
       {Optional{spec.monitoring.service_monitor, kinds::kServiceMonitor,
                 "servicemonitors.monitoring.coreos.com", &DesiredServiceMonitor},
        Optional{spec.monitoring.prometheus_rule, kinds::kPrometheusRule,
                 "prometheusrules.monitoring.coreos.com", &DesiredPrometheusRule}}) {
    if (!o.enabled) continue;  // never created unless asked; GC removes it with the KVCache
    StatusOr<Json> crd = kube_.Get(kinds::kCrd, "", o.crd);
    if (!crd.ok()) {
      if (crd.status().code() == StatusCode::kNotFound) {
        pass.Degrade("MonitoringCrdMissing", std::string("CRD ") + o.crd + " is not installed");
        continue;
      }
      return crd.status();
    }
    if (Status s = Apply(pass, o.ref, o.desired(spec)); !s.ok()) return s;
  }

  // Claims grow in place (the StatefulSet's template keeps its first size).
  std::optional<double> want = QuantityBytes(spec.storage.size);
  StatusOr<kube::ListResult> claims = kube_.List(kinds::kPvc, pass.ns, by_instance);
  if (!claims.ok()) return claims.status();
  for (const Json& pvc : claims->items) {
    std::string pvc_name = pvc["metadata"]["name"].get<std::string>();
    int shard = ShardOf(pvc);
    // Only once this KVCache has pushed a topology (epoch > 0): before that, a claim of a
    // shard outside the layout is kept data of an earlier KVCache of the same name, which
    // AdoptNodeLayout brings back.
    if (pass.epoch > 0 && shard >= 0 && !keep.count(shard) && !with_statefulset.count(shard)) {
      // A drained shard's claim, once its StatefulSet is deleted: every key it held has moved.
      // Kept, it would come back with stale keys when a later scale-up reuses the shard id.
      // (The API server's pvc-protection finalizer holds it until the pods are gone.)
      if (pvc["metadata"].contains("deletionTimestamp")) continue;
      Status s = kube_.Delete(kinds::kPvc, pass.ns, pvc_name);
      metrics_.Write("delete");
      if (!s.ok() && s.code() != StatusCode::kNotFound) return s;
      Event(pass, "Normal", "StorageReclaimed",
            "Deleted PersistentVolumeClaim " + pvc_name + " of drained shard " +
                std::to_string(shard));
      continue;
    }
    std::string have = StringAt(pvc, "/spec/resources/requests/storage"_json_pointer);
    std::optional<double> have_bytes = QuantityBytes(have);
    bool grow = want && have_bytes ? *want > *have_bytes : have != spec.storage.size;
    if (!grow) continue;
    Json patch = {{"spec", {{"resources", {{"requests", {{"storage", spec.storage.size}}}}}}}};
    StatusOr<Json> patched =
        kube_.Patch(kinds::kPvc, pass.ns, pvc_name, kube::PatchType::kMerge, patch);
    metrics_.Write("patch");
    if (!patched.ok()) {
      StatusCode code = patched.status().code();
      if (code != StatusCode::kInvalidArgument && code != StatusCode::kPermissionDenied) {
        return patched.status();
      }
      // Refused for good (a StorageClass without allowVolumeExpansion): say so and go on, so
      // failover and topology keep working; the size cannot be lowered again (CEL rule).
      pass.Degrade("VolumeExpansionFailed", "PersistentVolumeClaim " + pvc_name + " cannot grow to " +
                                                spec.storage.size + ": " + patched.status().message());
      continue;
    }
    Event(pass, "Normal", "VolumeExpanded",
          "Requested " + spec.storage.size + " for PersistentVolumeClaim " + pvc_name);
  }
  return Status::Ok();
}

Status KVCacheReconciler::ReadPodsAndNodes(Pass& pass) {
  kube::ListOptions options;
  options.label_selector = SelectorString(pass.spec);
  StatusOr<kube::ListResult> pods = kube_.List(kinds::kPod, pass.ns, options);
  if (!pods.ok()) return pods.status();
  for (const Json& pod : pods->items) {
    PodInfo info;
    info.name = pod["metadata"]["name"].get<std::string>();
    info.ip = StringAt(pod, "/status/podIP"_json_pointer);
    bool deleting = pod["metadata"].contains("deletionTimestamp");
    info.running = StringAt(pod, "/status/phase"_json_pointer) == "Running" && !info.ip.empty() &&
                   !deleting;
    for (const Json& c : pod.value("/status/conditions"_json_pointer, Json::array())) {
      if (c.value("type", "") == "Ready") info.ready = c.value("status", "") == "True";
    }
    info.ready = info.ready && info.running;
    info.revision = StringAt(pod, "/metadata/labels/controller-revision-hash"_json_pointer);
    for (const Json& c : pod.value("/status/containerStatuses"_json_pointer, Json::array())) {
      info.restarts += c.value("restartCount", int64_t{0});
    }
    pass.pods[info.name] = info;
  }
  for (const auto& [name, pod] : pass.pods) {
    if (!pod.running) continue;
    StatusOr<NodeStatus> node = pass.admin->GetStatus(pass.NodeAddr(name));
    // The address is a DNS name: after every pod came back with a new IP it can lead, for as
    // long as DNS caches it, to the pod that had this one's IP before. Another node's answer
    // is no answer from this one (it must never be promoted or pushed a move in its place).
    if (node.ok() && (node->name.empty() || node->name == name)) pass.nodes[name] = *node;
  }
  return Status::Ok();
}

void KVCacheReconciler::AdoptNodeLayout(Pass& pass) {
  // Epoch 0: this KVCache never pushed a topology. A node that already has one runs on a
  // volume kept from an earlier KVCache of the same name (reclaimPolicy Keep, deleted and
  // created again) or the status was lost. Its layout is the truth about where keys are: an
  // even layout pushed over it would strand every key of a slot that had moved.
  if (pass.epoch != 0) return;
  const std::string* newest = nullptr;
  uint64_t newest_epoch = 0;
  for (const auto& [name, node] : pass.nodes) {
    if (node.epoch > newest_epoch) {
      newest = &name;
      newest_epoch = node.epoch;
    }
  }
  if (newest == nullptr) return;
  StatusOr<protocol::Topology> topology = pass.admin->GetTopology(pass.NodeAddr(*newest));
  std::string problem;
  std::map<int, ShardLayout> adopted;
  if (!topology.ok()) {
    problem = topology.status().ToString();
  } else if (topology->cluster != pass.spec.name) {
    problem = "it belongs to cluster " + topology->cluster;
  } else {
    int owned = 0;
    for (const protocol::Shard& s : topology->shards) {
      int shard = -1, ordinal = -1;
      if (!ParsePodName(pass.spec, s.primary.name, &shard, &ordinal) || shard != s.id) {
        problem = "shard " + std::to_string(s.id) + " names primary " + s.primary.name;
        break;
      }
      adopted[s.id] = {s.id, NormalizeSlots(s.slots), s.primary.name};
      owned += SlotCount(adopted[s.id].slots);
    }
    if (problem.empty() && owned != protocol::kSlotCount) {
      problem = "its shards own " + std::to_string(owned) + " slots";
    }
  }
  if (!problem.empty()) {
    // Pushing our own layout would overwrite it: wait until it can be read or is fixed.
    pass.Degrade("LayoutUnreadable", "node " + *newest + " has topology epoch " +
                                         std::to_string(newest_epoch) +
                                         " that cannot be adopted: " + problem);
    pass.hold_topology = true;
    pass.Requeue(options_.progress_interval);
    return;
  }
  AddMissingShards(pass.spec, &adopted);
  pass.layout = std::move(adopted);
  pass.epoch = topology->epoch;
  pass.topology_hash = TopologyHash(*topology);
  Event(pass, "Normal", "LayoutRecovered",
        "Adopted topology epoch " + std::to_string(topology->epoch) + " (" +
            std::to_string(topology->shards.size()) + " shards) from node " + *newest +
            ": its volume holds data of an earlier KVCache of this name");
}

void KVCacheReconciler::StepFailover(Pass& pass) {
  const KVCacheSpec& spec = pass.spec;
  if (pass.epoch == 0) return;  // nothing was ever served: no one to fail over from
  // Still Creating (never every node ready): a primary that has not started yet holds no data
  // a replica could save, and promoting a replica of it only churns full syncs. (In e2e, with
  // timeoutSeconds 3, slow pod starts had every shard failed over during creation.)
  const std::string old_phase = pass.old_status.value("phase", "");
  if (old_phase.empty() || old_phase == "Pending" || old_phase == "Creating") return;
  auto now = clock_.WallNow();
  for (auto& [id, layout] : pass.layout) {
    if (pass.PodReady(layout.primary)) {
      pass.primary_not_ready_since.erase(id);
      continue;
    }
    // A shard that owns no slots holds nothing a client reads: it is being added (its pods may
    // still be starting) or has been drained. Promoting one of its replicas saves no data and
    // costs a full sync; a target whose primary is down makes its move fail and retry
    // instead. (In e2e with timeoutSeconds 3, every shard added by a reshard was failed over
    // while its pods started.)
    if (SlotCount(layout.slots) == 0) {
      pass.primary_not_ready_since.erase(id);
      continue;
    }
    if (!spec.failover.enabled || spec.replicas_per_shard == 0) {
      pass.Degrade("PrimaryNotReady", "primary " + layout.primary + " of shard " +
                                          std::to_string(id) + " is not ready (no failover)");
      continue;
    }
    auto since_it = pass.primary_not_ready_since.find(id);
    std::optional<std::chrono::system_clock::time_point> since;
    if (since_it != pass.primary_not_ready_since.end()) since = ParseTime(since_it->second);
    if (!since) {
      pass.primary_not_ready_since[id] = FormatTime(now);
      since = now;
    }
    auto timeout = std::chrono::seconds(spec.failover.timeout_seconds);
    auto elapsed = now - *since;
    if (elapsed < timeout) {
      pass.Degrade("PrimaryNotReady", "primary " + layout.primary + " of shard " +
                                          std::to_string(id) + " is not ready");
      pass.Requeue(std::chrono::duration_cast<milliseconds>(timeout - elapsed) + milliseconds(100));
      continue;
    }
    // Promote the most caught-up replica that answers. Its applied offset is what survives:
    // anything the old primary acknowledged beyond it (async mode) is lost, which is why
    // sync mode waits for minAcks replicas before acknowledging.
    std::vector<PromotionCandidate> candidates;
    for (int ordinal = 0; ordinal < spec.NodesPerShard(); ++ordinal) {
      std::string pod = PodName(spec, id, ordinal);
      if (pod == layout.primary) continue;
      auto node = pass.nodes.find(pod);
      candidates.push_back({pod, node != pass.nodes.end(),
                            node != pass.nodes.end() ? node->second.applied_offset : 0});
    }
    std::optional<std::string> chosen = ChoosePromotion(candidates);
    if (!chosen) {
      pass.Degrade("NoPromotableReplica", "primary " + layout.primary + " of shard " +
                                              std::to_string(id) +
                                              " is not ready and no replica answers");
      pass.Requeue(options_.progress_interval);
      continue;
    }
    uint64_t epoch = std::max(pass.MaxNodeEpoch(), pass.forced_epoch) + 1;
    StatusOr<NodeStatus> promoted = pass.admin->Promote(pass.NodeAddr(*chosen), {epoch});
    if (!promoted.ok()) {
      pass.Degrade("PromotionFailed", "promoting " + *chosen + ": " + promoted.status().ToString());
      pass.Requeue(options_.progress_interval);
      continue;
    }
    std::string old_primary = layout.primary;
    layout.primary = *chosen;
    pass.forced_epoch = epoch;
    pass.primary_not_ready_since.erase(id);
    pass.failover = {{"shard", id},
                     {"oldPrimary", old_primary},
                     {"newPrimary", *chosen},
                     {"epoch", epoch},
                     {"startedAt", FormatTime(now)}};
    metrics_.Failover();
    Event(pass, "Warning", "PrimaryFailedOver",
          "Shard " + std::to_string(id) + ": promoted " + *chosen + " (applied offset " +
              std::to_string(promoted->applied_offset) + ") after " + old_primary +
              " was not ready for " + std::to_string(spec.failover.timeout_seconds) + "s");
  }
}

bool KVCacheReconciler::TopologySettled(const Pass& pass) const {
  const KVCacheSpec& spec = pass.spec;
  if (pass.epoch == 0 || !pass.failover.is_null() ||
      TopologyHash(BuildTopology(spec, 1, pass.Layouts())) != pass.topology_hash) {
    return false;
  }
  for (const auto& [id, l] : pass.layout) {
    for (int ordinal = 0; ordinal < spec.NodesPerShard(); ++ordinal) {
      auto node = pass.nodes.find(PodName(spec, id, ordinal));
      if (node == pass.nodes.end() || node->second.epoch < pass.epoch) return false;
    }
  }
  return true;
}

void KVCacheReconciler::StepRollout(Pass& pass) {
  const KVCacheSpec& spec = pass.spec;
  // Which pods run an old revision of their StatefulSet's template.
  std::map<int, std::vector<std::string>> outdated;
  for (const auto& [id, sts] : pass.statefulsets) {
    if (!pass.layout.count(id)) continue;
    std::string update = StringAt(sts, "/status/updateRevision"_json_pointer);
    if (update.empty()) continue;  // the StatefulSet controller has not seen it yet
    for (int ordinal = spec.NodesPerShard() - 1; ordinal >= 0; --ordinal) {
      auto pod = pass.pods.find(PodName(spec, id, ordinal));
      if (pod != pass.pods.end() && !pod->second.revision.empty() &&
          pod->second.revision != update) {
        outdated[id].push_back(pod->first);
      }
    }
  }
  if (outdated.empty()) return;
  pass.rolling = true;
  pass.Progress("RollingUpdate", "rolling out a new pod template one pod at a time");
  pass.Requeue(options_.progress_interval);
  // One pod at a time across the whole KVCache, each step only on a settled, fully ready
  // cluster (a replica is ready only once caught up with its primary), never during a
  // reshard or failover.
  if (!pass.resharding.is_null() || !TopologySettled(pass)) return;
  for (const auto& [id, l] : pass.layout) {
    for (int ordinal = 0; ordinal < spec.NodesPerShard(); ++ordinal) {
      if (!pass.PodReady(PodName(spec, id, ordinal))) return;
    }
  }
  auto& [id, pods] = *outdated.begin();
  ShardLayout& layout = pass.layout.at(id);
  // Replicas first, highest ordinal first (pods are listed that way).
  std::string victim;
  for (const std::string& pod : pods) {
    if (pod != layout.primary) {
      victim = pod;
      break;
    }
  }
  if (victim.empty() && spec.replicas_per_shard > 0) {
    // Only the primary is left: hand its role to the most caught-up replica first, so the
    // restart costs a role change (503 + Retry-After for a moment) instead of an outage.
    SwitchOver(pass, id, "before its restart");
    return;  // the old primary restarts as a replica on a later pass
  }
  if (victim.empty()) victim = layout.primary;  // no replica: a restart is an outage anyway
  Status s = kube_.Delete(kinds::kPod, pass.ns, victim);
  metrics_.Write("delete");
  if (!s.ok() && s.code() != StatusCode::kNotFound) {
    // Shown in status too: a missing RBAC grant would otherwise stall the roll silently.
    pass.Degrade("PodRestartFailed", "deleting " + victim + " for the new pod template: " +
                                         s.ToString());
    pass.error = s;
    return;
  }
  Event(pass, "Normal", "PodRestarted", "Restarted " + victim + " for the new pod template");
}

bool KVCacheReconciler::AwaitCaughtUp(Pass& pass, const std::string& primary,
                                      const std::string& replica) {
  // The primary's offset must also hold still between two looks: a write that passed its
  // check just before the pause is numbered a moment later.
  std::optional<uint64_t> last;
  const int polls = static_cast<int>(options_.switchover_catch_up / kCatchUpPollInterval) + 2;
  for (int i = 0; i < polls; ++i) {
    StatusOr<NodeStatus> p = pass.admin->GetStatus(pass.NodeAddr(primary));
    StatusOr<NodeStatus> r = pass.admin->GetStatus(pass.NodeAddr(replica));
    if (!p.ok() || !r.ok()) return false;
    if (last == p->applied_offset && r->applied_offset >= p->applied_offset) return true;
    last = p->applied_offset;
    std::this_thread::sleep_for(kCatchUpPollInterval);
  }
  return false;
}

bool KVCacheReconciler::SwitchOver(Pass& pass, int id, const std::string& why) {
  const KVCacheSpec& spec = pass.spec;
  ShardLayout& layout = pass.layout.at(id);
  std::vector<PromotionCandidate> candidates;
  for (int ordinal = 0; ordinal < spec.NodesPerShard(); ++ordinal) {
    std::string pod = PodName(spec, id, ordinal);
    auto node = pass.nodes.find(pod);
    if (pod == layout.primary || node == pass.nodes.end() || !pass.PodReady(pod)) continue;
    candidates.push_back({pod, true, node->second.applied_offset});
  }
  std::optional<std::string> chosen = ChoosePromotion(candidates);
  if (!chosen) return false;
  // Planned, so nothing acknowledged is lost even with async replication: the primary stops
  // taking writes first (clients get 503 + Retry-After), and the successor is promoted once it
  // has applied all the primary wrote. Giving up leaves the pause to end by itself.
  if (StatusOr<NodeStatus> paused =
          pass.admin->StepDown(pass.NodeAddr(layout.primary), {kSwitchoverPauseMs});
      !paused.ok()) {
    pass.Degrade("SwitchoverFailed",
                 "pausing writes on " + layout.primary + ": " + paused.status().ToString());
    return false;
  }
  if (!AwaitCaughtUp(pass, layout.primary, *chosen)) {
    pass.Degrade("SwitchoverFailed", *chosen + " did not catch up with " + layout.primary +
                                         " while its writes were paused; trying again");
    return false;
  }
  uint64_t epoch = std::max(pass.MaxNodeEpoch(), pass.forced_epoch) + 1;
  StatusOr<NodeStatus> promoted = pass.admin->Promote(pass.NodeAddr(*chosen), {epoch});
  if (!promoted.ok()) {
    pass.Degrade("SwitchoverFailed", "promoting " + *chosen + ": " + promoted.status().ToString());
    return false;
  }
  Event(pass, "Normal", "PrimarySwitchedOver",
        "Shard " + std::to_string(id) + ": " + *chosen + " took over from " + layout.primary +
            " " + why);
  layout.primary = *chosen;
  pass.forced_epoch = epoch;
  return true;
}

void KVCacheReconciler::StepReplicaScaleIn(Pass& pass) {
  const KVCacheSpec& spec = pass.spec;
  for (auto& [id, layout] : pass.layout) {
    int shard = -1, ordinal = -1;
    if (!ParsePodName(spec, layout.primary, &shard, &ordinal) || ordinal < spec.NodesPerShard()) {
      continue;
    }
    pass.Progress("ScalingReplicas", "primary " + layout.primary + " of shard " +
                                         std::to_string(id) + " hands over before its pod goes");
    pass.Requeue(options_.progress_interval);
    // One switchover per pass, on a settled cluster (the staying replica caught up and ready).
    if (!pass.resharding.is_null() || !TopologySettled(pass)) return;
    SwitchOver(pass, id, "before replicasPerShard " + std::to_string(spec.replicas_per_shard) +
                             " removes its pod");
    return;
  }
}

void KVCacheReconciler::StepResharding(Pass& pass) {
  const KVCacheSpec& spec = pass.spec;
  auto done = [&]() {
    if (!pass.resharding.is_null()) {
      Event(pass, "Normal", "ReshardCompleted",
            "Slots spread over " + std::to_string(spec.shards) + " shards");
    }
    pass.resharding = nullptr;
    // Drained shards leave the layout; their StatefulSets go on the next pass, once the
    // topology without them is out.
    for (auto it = pass.layout.begin(); it != pass.layout.end();) {
      if (it->first >= spec.shards && it->second.slots.empty()) {
        it = pass.layout.erase(it);
        pass.Progress("Resharding", "removing drained shards");
        pass.Requeue(options_.progress_interval);
      } else {
        ++it;
      }
    }
  };

  Json current = pass.resharding.is_object() ? pass.resharding.value("current", Json())
                                             : Json();
  std::vector<SlotMove> plan = PlanReshard(pass.Slots(), spec.shards);
  if (current.is_null() && plan.empty()) return done();

  // Moves need a settled cluster: the current layout's topology on every member (a new shard
  // must be known to all nodes, target included, before slots stream to it), no failover in
  // flight, every primary ready.
  if (!TopologySettled(pass)) {
    pass.Progress("Resharding", "waiting for every node to have the topology before moving slots");
    pass.Requeue(options_.progress_interval);
    return;
  }
  for (const auto& [id, l] : pass.layout) {
    if (!pass.PodReady(l.primary) || !pass.nodes.count(l.primary)) {
      pass.Progress("Resharding", "waiting for primary " + l.primary + " to be ready");
      pass.Requeue(options_.progress_interval);
      return;
    }
  }
  if (pass.resharding.is_null()) {
    int from = 0;
    for (const auto& [id, l] : pass.layout) from += l.slots.empty() ? 0 : 1;
    pass.resharding = {{"fromShards", from},
                       {"toShards", spec.shards},
                       {"completedMoves", 0},
                       {"startedAt", FormatTime(clock_.WallNow())}};
    Event(pass, "Normal", "ReshardStarted",
          "Moving slots from " + std::to_string(from) + " to " + std::to_string(spec.shards) +
              " shards in " + std::to_string(plan.size()) + " moves");
  }
  pass.resharding["toShards"] = spec.shards;
  int completed = pass.resharding.value("completedMoves", 0);

  auto pending_json = [](const std::vector<SlotMove>& moves, size_t skip) {
    Json out = Json::array();
    for (size_t i = skip; i < moves.size(); ++i) {
      out.push_back({{"source", moves[i].source},
                     {"target", moves[i].target},
                     {"slots", FormatSlots(moves[i].slots)}});
    }
    return out;
  };

  if (current.is_null()) {
    // Start the next move of a fresh plan (replanned each time, so a spec change mid-reshard
    // is followed from the next move on).
    const SlotMove& move = plan.front();
    protocol::MigrationRequest request;
    request.slots = move.slots;
    request.target_shard = move.target;
    const std::string& target_primary = pass.layout[move.target].primary;
    request.target = {target_primary, PodAddress(spec, target_primary)};
    const std::string& source_primary = pass.layout[move.source].primary;
    StatusOr<protocol::MigrationStatus> started =
        pass.admin->StartMigration(pass.NodeAddr(source_primary), request);
    if (!started.ok()) {
      pass.Degrade("MigrationFailed", "starting the move of slots " + FormatSlots(move.slots) +
                                          " from shard " + std::to_string(move.source) + ": " +
                                          started.status().ToString());
      pass.Requeue(options_.progress_interval * 5);
      return;
    }
    metrics_.MigrationStarted();
    Event(pass, "Normal", "MigrationStarted",
          "Moving slots " + FormatSlots(move.slots) + " from shard " +
              std::to_string(move.source) + " to shard " + std::to_string(move.target));
    pass.resharding["current"] = {{"source", move.source},
                                  {"target", move.target},
                                  {"slots", FormatSlots(move.slots)},
                                  {"state", "Streaming"},
                                  {"keysMoved", 0},
                                  {"keysRemaining", started->keys_remaining}};
    pass.resharding["pending"] = pending_json(plan, 1);
    pass.resharding["totalMoves"] = completed + static_cast<int>(plan.size());
    pass.Progress("Resharding", "moving slots " + FormatSlots(move.slots));
    pass.Requeue(options_.progress_interval);
    return;
  }

  // A move is streaming: look at it on the source.
  SlotMove move;
  move.source = current.value("source", -1);
  move.target = current.value("target", -1);
  auto slots = ParseSlots(current.value("slots", std::string()));
  if (!slots.ok() || !pass.layout.count(move.source) || !pass.layout.count(move.target)) {
    pass.resharding.erase("current");  // unusable record: replan
    pass.Requeue(milliseconds(0));
    return;
  }
  move.slots = *slots;
  const std::string& source_primary = pass.layout[move.source].primary;
  StatusOr<protocol::MigrationStatus> state = pass.admin->GetMigration(pass.NodeAddr(source_primary));
  if (!state.ok()) {
    pass.Progress("Resharding", "source " + source_primary + " does not answer");
    pass.Requeue(options_.progress_interval);
    return;
  }
  using State = protocol::MigrationStatus::State;
  bool same = state->target_shard == move.target && NormalizeSlots(state->slots) == move.slots;
  if (state->state == State::kDone && same) {
    // Every key of these slots is on the target: flip ownership (new epoch below).
    std::map<int, std::vector<SlotRange>> slots_now = pass.Slots();
    ApplyMove(&slots_now, move);
    for (auto& [id, l] : pass.layout) l.slots = slots_now[id];
    pass.resharding.erase("current");
    pass.resharding["completedMoves"] = completed + 1;
    metrics_.MigrationDone();
    Event(pass, "Normal", "MigrationDone",
          "Shard " + std::to_string(move.target) + " owns slots " + FormatSlots(move.slots) +
              " (" + std::to_string(state->keys_moved) + " keys moved)");
    std::vector<SlotMove> rest = PlanReshard(pass.Slots(), spec.shards);
    pass.resharding["pending"] = pending_json(rest, 0);
    if (rest.empty()) return done();
    pass.Progress("Resharding", "slots moved, next move pending");
    pass.Requeue(options_.progress_interval);
    return;
  }
  if (state->state == State::kStreaming && same) {
    pass.resharding["current"]["keysMoved"] = state->keys_moved;
    pass.resharding["current"]["keysRemaining"] = state->keys_remaining;
    pass.Progress("Resharding", "moving slots " + FormatSlots(move.slots) + ": " +
                                    std::to_string(state->keys_moved) + " keys moved");
    pass.Requeue(options_.progress_interval);
    return;
  }
  // Failed, or the source forgot it (restarted): start this move again on the next pass.
  if (state->state == State::kFailed) {
    metrics_.MigrationFailed();
    pass.Degrade("MigrationFailed", "moving slots " + FormatSlots(move.slots) + " failed: " +
                                        state->error);
    Event(pass, "Warning", "MigrationFailed",
          "Moving slots " + FormatSlots(move.slots) + " failed: " + state->error + "; retrying");
  }
  pass.resharding.erase("current");
  pass.Requeue(options_.progress_interval);
}

void KVCacheReconciler::StepTopology(Pass& pass) {
  if (pass.hold_topology) return;
  protocol::Topology topology = BuildTopology(pass.spec, 1, pass.Layouts());
  std::string hash = TopologyHash(topology);

  // The first topology waits for every member to run: a node becomes ready only with one,
  // and the cluster should start with every shard serving.
  if (pass.epoch == 0) {
    for (const protocol::Shard& s : topology.shards) {
      std::vector<const protocol::Member*> members = {&s.primary};
      for (const auto& r : s.replicas) members.push_back(&r);
      for (const protocol::Member* m : members) {
        auto it = pass.pods.find(m->name);
        if (it == pass.pods.end() || !it->second.running || !pass.nodes.count(m->name)) {
          pass.Progress("Creating", "waiting for node " + m->name + " to start");
          pass.Requeue(options_.progress_interval);
          return;
        }
      }
    }
  }
  if (hash != pass.topology_hash || pass.forced_epoch > pass.epoch) {
    uint64_t epoch = std::max(pass.MaxNodeEpoch() + 1, pass.forced_epoch);
    pass.epoch = epoch;
    pass.topology_hash = hash;
    Event(pass, "Normal", "TopologyChanged", "Topology epoch " + std::to_string(epoch));
  }
  topology.epoch = pass.epoch;

  // A failover's new primary goes first, so that a move it has to take over is running again
  // before any other node routes a request to it.
  std::vector<std::string> order;
  const std::string new_primary =
      pass.failover.is_object() ? pass.failover.value("newPrimary", "") : "";
  if (pass.pods.count(new_primary)) order.push_back(new_primary);
  for (const auto& [name, pod] : pass.pods) {
    if (name != new_primary) order.push_back(name);
  }
  int pushed = 0;
  bool answering_behind = false;  // a node that answers has not got the epoch
  for (const std::string& name : order) {
    if (!pass.pods.at(name).running) continue;
    auto node = pass.nodes.find(name);
    if (node == pass.nodes.end()) {
      pass.topology_behind = true;  // running but not answering (yet, or its node is lost)
      continue;
    }
    if (node->second.epoch < pass.epoch) {
      Status s = pass.admin->PutTopology(pass.NodeAddr(name), topology);
      if (s.ok() || s.code() == StatusCode::kConflict) {
        // Conflict: the node already has this epoch or newer (a push before a restart).
        ++pushed;
        node->second.epoch = std::max(node->second.epoch, pass.epoch);
      } else {
        pass.topology_behind = true;
        answering_behind = true;
      }
    }
    if (name == new_primary && node->second.epoch >= pass.epoch) ResumeMoveOnNewPrimary(pass);
  }
  if (pushed > 0) metrics_.TopologyPushed();
  if (pass.topology_behind) {
    pass.Progress("TopologyPropagating", "not every node has topology epoch " +
                                             std::to_string(pass.epoch));
    pass.Requeue(options_.progress_interval);
  }
  // Done once every node that answers has the topology naming the new primary. A node that
  // does not answer (the old primary's lost Kubernetes node) gets it when it is back; waiting
  // for it would hold the KVCache in FailingOver for as long as the node is lost.
  if (pass.failover.is_object() && !answering_behind &&
      pass.failover.value("epoch", uint64_t{0}) <= pass.epoch) {
    pass.failover = nullptr;
  }
}

// The new primary knows nothing of the move its shard was the source of (the move's state is
// on the old primary's volume): keys already at the target would answer 404 there, and a
// DELETE of one would miss the target's copy, until StepResharding restarted the move a few
// passes later. So the same move (slots, target) starts again on it at once; it streams what
// is still here and forwards what is not. Once per failover; a failure leaves the restart to
// StepResharding.
void KVCacheReconciler::ResumeMoveOnNewPrimary(Pass& pass) {
  if (!pass.failover.is_object() || pass.failover.value("moveResumed", false)) return;
  Json current = pass.resharding.is_object() ? pass.resharding.value("current", Json()) : Json();
  if (!current.is_object() || current.value("source", -1) != pass.failover.value("shard", -2)) {
    return;
  }
  const int target = current.value("target", -1);
  StatusOr<std::vector<SlotRange>> slots = ParseSlots(current.value("slots", std::string()));
  if (!slots.ok() || !pass.layout.count(target)) return;
  pass.failover["moveResumed"] = true;
  protocol::MigrationRequest request;
  request.slots = *slots;
  request.target_shard = target;
  const std::string& target_primary = pass.layout[target].primary;
  request.target = {target_primary, PodAddress(pass.spec, target_primary)};
  const std::string new_primary = pass.failover.value("newPrimary", "");
  StatusOr<protocol::MigrationStatus> started =
      pass.admin->StartMigration(pass.NodeAddr(new_primary), request);
  if (!started.ok() && started.status().code() != StatusCode::kConflict) {
    Event(pass, "Warning", "MigrationFailed",
          "Resuming the move of slots " + FormatSlots(*slots) + " on " + new_primary + ": " +
              started.status().ToString() + "; it starts again once the failover is over");
    return;
  }
  Event(pass, "Normal", "MigrationResumed",
        "Shard " + std::to_string(current.value("source", -1)) + "'s new primary " +
            new_primary + " took over the move of slots " + FormatSlots(*slots) + " to shard " +
            std::to_string(target));
}

Status KVCacheReconciler::WriteStatus(Pass& pass) {
  const KVCacheSpec& spec = pass.spec;
  Json status = Json::object();
  status["observedGeneration"] = spec.generation;
  std::vector<Condition> conditions;
  std::string phase;

  if (!pass.spec_error.ok()) {
    // Keep what was known (the layout must survive a typo in the spec).
    status = pass.old_status;
    status["observedGeneration"] = spec.generation;
    phase = "Failed";
    conditions = {{"Available", false, "InvalidSpec", pass.spec_error.message()},
                  {"Progressing", false, "InvalidSpec", pass.spec_error.message()},
                  {"Degraded", true, "InvalidSpec", pass.spec_error.message()}};
  } else if (spec.paused) {
    status = pass.old_status;
    status["observedGeneration"] = spec.generation;
    phase = "Paused";
    const std::string why = std::string("annotation ") + kPauseAnnotation + " is \"true\"";
    bool was_available = false;
    for (const Json& c : pass.old_status.value("conditions", Json::array())) {
      if (c.value("type", "") == "Available") was_available = c.value("status", "") == "True";
    }
    conditions = {{"Available", was_available, "ReconcilePaused", why},
                  {"Progressing", false, "ReconcilePaused", why},
                  {"Degraded", false, "ReconcilePaused", why}};
  } else {
    int nodes = 0, ready_nodes = 0, shard_count = 0;
    bool available = pass.epoch > 0;
    Json shards = Json::array();
    for (const auto& [id, l] : pass.layout) {
      Json entry = {{"id", id}, {"primary", l.primary}, {"slots", FormatSlots(l.slots)},
                    {"slotCount", SlotCount(l.slots)}};
      Json replicas = Json::array();
      int shard_ready = 0;
      for (int ordinal = 0; ordinal < spec.NodesPerShard(); ++ordinal) {
        std::string pod = PodName(spec, id, ordinal);
        if (pod != l.primary) replicas.push_back(pod);
        if (pass.PodReady(pod)) ++shard_ready;
      }
      nodes += spec.NodesPerShard();
      ready_nodes += shard_ready;
      entry["replicas"] = replicas;
      entry["readyNodes"] = shard_ready;
      entry["ready"] = shard_ready == spec.NodesPerShard();
      if (!l.slots.empty()) {
        ++shard_count;
        if (!pass.PodReady(l.primary)) available = false;
      }
      if (id >= spec.shards) entry["draining"] = true;
      if (auto it = pass.primary_not_ready_since.find(id); it != pass.primary_not_ready_since.end()) {
        entry["primaryNotReadySince"] = it->second;
      }
      shards.push_back(entry);
    }
    status["shards"] = shards;
    status["nodes"] = nodes;
    status["readyNodes"] = ready_nodes;
    status["ready"] = std::to_string(ready_nodes) + "/" + std::to_string(nodes);
    status["shardCount"] = shard_count;
    metrics_.SetKVCache(pass.ns, pass.name, ready_nodes, nodes, available);
    status["selector"] = SelectorString(spec);
    status["endpoint"] = Endpoint(spec);
    status["topologyEpoch"] = pass.epoch;
    if (!pass.topology_hash.empty()) status["topologyHash"] = pass.topology_hash;
    if (!pass.config_hash.empty()) status["configHash"] = pass.config_hash;
    if (!pass.failover.is_null()) status["failover"] = pass.failover;
    if (!pass.resharding.is_null()) status["resharding"] = pass.resharding;

    // A node that is not ready and never restarted is starting (new cluster, more replicas,
    // a pod replaced by the rollout): progress. One that failed after running: degraded.
    int starting = 0, failing = 0;
    for (const auto& [id, l] : pass.layout) {
      for (int ordinal = 0; ordinal < spec.NodesPerShard(); ++ordinal) {
        auto pod = pass.pods.find(PodName(spec, id, ordinal));
        if (pod != pass.pods.end() && pod->second.ready) continue;
        if (pod == pass.pods.end() || (pod->second.restarts == 0 && pod->second.running) ||
            (pod->second.restarts == 0 && !pod->second.running && pass.epoch == 0)) {
          ++starting;
        } else {
          ++failing;
        }
      }
    }
    if (failing > 0) {
      pass.Degrade("NodesNotReady", std::to_string(nodes - ready_nodes) + " of " +
                                        std::to_string(nodes) + " nodes are not ready");
    } else if (starting > 0 && !pass.rolling) {
      pass.Progress("NodesStarting", std::to_string(starting) + " of " + std::to_string(nodes) +
                                         " nodes are starting");
    }
    if (ready_nodes < nodes) {
      if (pass.rolling) pass.Progress("RollingUpdate", "rolling out a new pod template");
      pass.Requeue(options_.progress_interval);
    } else if (pass.rolling) {
      pass.Progress("RollingUpdate", "rolling out a new pod template");
      pass.Requeue(options_.progress_interval);
    }

    std::string old_phase = pass.old_status.value("phase", "");
    bool ever_available = pass.epoch > 0 && old_phase != "" && old_phase != "Pending" &&
                          old_phase != "Creating";
    if (!pass.resharding.is_null()) phase = "Resharding";
    else if (!pass.failover.is_null()) phase = "FailingOver";
    else if (!ever_available && (!available || ready_nodes < nodes)) phase = "Creating";
    else if (!pass.degraded.empty()) phase = "Degraded";
    else if (pass.rolling) phase = "Upgrading";
    else if (available) phase = "Running";
    else phase = "Degraded";

    const std::string endpoint_msg = "serving on " + Endpoint(spec);
    conditions.push_back(available
                             ? Condition{"Available", true, "AllShardsServing", endpoint_msg}
                             : Condition{"Available", false,
                                         pass.epoch == 0 ? "TopologyNotPushed" : "ShardsUnavailable",
                                         pass.epoch == 0 ? "waiting for every node to start"
                                                         : "a shard's primary is not ready"});
    conditions.push_back(
        pass.progressing.empty()
            ? Condition{"Progressing", false, "ReconcileComplete", "the cluster matches the spec"}
            : Condition{"Progressing", true, pass.progressing.front(), pass.progressing_message});
    conditions.push_back(pass.degraded.empty()
                             ? Condition{"Degraded", false, "AsExpected", "all nodes healthy"}
                             : Condition{"Degraded", true, pass.degraded.front(),
                                         pass.degraded_message});
  }
  status["phase"] = phase;

  // Conditions keep their lastTransitionTime while their status stays the same.
  std::map<std::string, Json> old_conditions;
  for (const Json& c : pass.old_status.value("conditions", Json::array())) {
    old_conditions[c.value("type", "")] = c;
  }
  Json out = Json::array();
  const std::string now = FormatTime(clock_.WallNow());
  for (const Condition& c : conditions) {
    std::string s = c.status ? "True" : "False";
    auto old = old_conditions.find(c.type);
    std::string since = old != old_conditions.end() && old->second.value("status", "") == s
                            ? old->second.value("lastTransitionTime", now)
                            : now;
    out.push_back({{"type", c.type},
                   {"status", s},
                   {"observedGeneration", spec.generation},
                   {"lastTransitionTime", since},
                   {"reason", c.reason},
                   {"message", c.message}});
  }
  status["conditions"] = out;

  if (status == pass.old_status) return Status::Ok();
  Json updated = pass.object;
  updated["status"] = status;
  StatusOr<Json> written = kube_.Update(kinds::kKVCache, pass.ns, updated, "status");
  metrics_.Write("status");
  if (!written.ok()) return written.status();
  pass.object = *written;
  if (phase != pass.old_status.value("phase", "")) {
    Event(pass, phase == "Degraded" || phase == "Failed" ? "Warning" : "Normal", "Phase" + phase,
          "KVCache is " + phase);
  }
  return Status::Ok();
}

ReconcileResult KVCacheReconciler::Finalize(Pass& pass) {
  Json finalizers = pass.object["metadata"].value("finalizers", Json::array());
  if (std::find(finalizers.begin(), finalizers.end(), kFinalizer) == finalizers.end()) {
    return {Status::Ok(), std::nullopt};  // the garbage collector does the rest
  }
  if (pass.spec.storage.delete_on_removal) {
    kube::ListOptions options;
    options.label_selector = "app.kubernetes.io/instance=" + pass.spec.name +
                             ",app.kubernetes.io/name=kvcache";
    StatusOr<kube::ListResult> claims = kube_.List(kinds::kPvc, pass.ns, options);
    if (!claims.ok()) return {claims.status(), std::nullopt};
    for (const Json& pvc : claims->items) {
      if (pvc["metadata"].contains("deletionTimestamp")) continue;
      std::string pvc_name = pvc["metadata"]["name"].get<std::string>();
      Status s = kube_.Delete(kinds::kPvc, pass.ns, pvc_name);
      metrics_.Write("delete");
      if (!s.ok() && s.code() != StatusCode::kNotFound) return {s, std::nullopt};
      Event(pass, "Normal", "StorageReclaimed", "Deleted PersistentVolumeClaim " + pvc_name);
    }
  }
  Json next = Json::array();
  for (const Json& f : finalizers) {
    if (f != kFinalizer) next.push_back(f);
  }
  Json patch = {{"metadata",
                 {{"finalizers", next},
                  {"resourceVersion", pass.object["metadata"]["resourceVersion"]}}}};
  StatusOr<Json> patched =
      kube_.Patch(kinds::kKVCache, pass.ns, pass.name, kube::PatchType::kMerge, patch);
  metrics_.Write("patch");
  if (!patched.ok()) {
    return {patched.status(), patched.status().code() == StatusCode::kConflict
                                  ? std::optional(milliseconds(0))
                                  : std::nullopt};
  }
  return {Status::Ok(), std::nullopt};
}

}  // namespace kvcache::op
