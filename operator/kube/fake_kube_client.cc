#include "kube/fake_kube_client.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <exception>

#include "kube/selector.h"

namespace kvcache::kube {
namespace {

using json = nlohmann::json;

std::string FormatRfc3339(std::chrono::system_clock::time_point t) {
  std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

const json& Meta(const json& object) {
  static const json kEmpty = json::object();
  auto it = object.find("metadata");
  return it != object.end() && it->is_object() ? *it : kEmpty;
}

int64_t ParseRv(const std::string& s, bool* ok) {
  try {
    size_t used = 0;
    int64_t v = std::stoll(s, &used);
    *ok = used == s.size();
    return v;
  } catch (const std::exception&) {
    *ok = false;
    return 0;
  }
}

// The object without the fields the server owns, to tell whether a write changed anything.
json Comparable(json object) {
  if (object.contains("metadata") && object["metadata"].is_object()) {
    object["metadata"].erase("resourceVersion");
    object["metadata"].erase("managedFields");
    object["metadata"].erase("generation");
  }
  return object;
}

// What generation tracks: everything but metadata and status.
json SpecPart(json object) {
  if (object.is_object()) {
    object.erase("metadata");
    object.erase("status");
  }
  return object;
}

bool HasFinalizers(const json& object) {
  const json& meta = Meta(object);
  auto it = meta.find("finalizers");
  return it != meta.end() && it->is_array() && !it->empty();
}

bool OwnedBy(const json& object, const std::string& uid) {
  const json& meta = Meta(object);
  auto it = meta.find("ownerReferences");
  if (it == meta.end() || !it->is_array()) return false;
  return std::any_of(it->begin(), it->end(),
                     [&](const json& ref) { return ref.value("uid", "") == uid; });
}

Status InvalidObject(const char* what) { return InvalidArgumentError(what); }

}  // namespace

std::string_view VerbName(Verb verb) {
  switch (verb) {
    case Verb::kGet: return "get";
    case Verb::kList: return "list";
    case Verb::kCreate: return "create";
    case Verb::kUpdate: return "update";
    case Verb::kPatch: return "patch";
    case Verb::kDelete: return "delete";
    case Verb::kWatch: return "watch";
  }
  return "unknown";
}

std::string FakeKubeClient::Request::ToString() const {
  std::string out(VerbName(verb));
  out += " " + ref.ApiVersion() + " " + ref.resource + " ";
  out += ns.empty() ? name : ns + "/" + name;
  if (!subresource.empty()) out += " (" + subresource + ")";
  if (result != StatusCode::kOk) out += " -> " + std::string(StatusCodeName(result));
  return out;
}

FakeKubeClient::FakeKubeClient(Clock* clock)
    : clock_(clock != nullptr ? clock : &SystemClock::Instance()) {}

FakeKubeClient::~FakeKubeClient() = default;

// ---------------------------------------------------------------------------------------------
// helpers (mu_ held)

std::optional<Status> FakeKubeClient::TakeInjectionLocked(Verb verb, const ResourceRef& ref,
                                                          std::string_view name) {
  for (auto it = injections_.begin(); it != injections_.end(); ++it) {
    if (it->verb != verb) continue;
    if (it->ref && (it->ref->group != ref.group || it->ref->resource != ref.resource)) continue;
    if (!it->name.empty() && it->name != name) continue;
    Status status = it->status;
    if (--it->remaining <= 0) injections_.erase(it);
    return status;
  }
  return std::nullopt;
}

void FakeKubeClient::RecordLocked(Verb verb, const ResourceRef& ref, std::string_view ns,
                                  std::string_view name, std::string_view subresource,
                                  std::optional<PatchType> patch_type, const Object& body,
                                  StatusCode result) {
  requests_.push_back(Request{verb, ref, std::string(ns), std::string(name),
                              std::string(subresource), patch_type, body, result});
}

Object FakeKubeClient::ScaleOfLocked(const ResourceRef& ref, const Object& obj) const {
  ScalePaths paths = ScalePathsLocked(ref);
  json scale = {{"apiVersion", "autoscaling/v1"}, {"kind", "Scale"}};
  scale["metadata"] = {{"name", MetaString(obj, "name")},
                       {"uid", MetaString(obj, "uid")},
                       {"resourceVersion", MetaString(obj, "resourceVersion")},
                       {"creationTimestamp", MetaString(obj, "creationTimestamp")}};
  if (ref.namespaced) scale["metadata"]["namespace"] = MetaString(obj, "namespace");
  json::json_pointer spec_ptr(paths.spec), status_ptr(paths.status);
  scale["spec"]["replicas"] = obj.contains(spec_ptr) ? obj.at(spec_ptr) : json(0);
  scale["status"]["replicas"] = obj.contains(status_ptr) ? obj.at(status_ptr) : json(0);
  if (!paths.selector.empty() && obj.contains(json::json_pointer(paths.selector))) {
    scale["status"]["selector"] = obj.at(json::json_pointer(paths.selector));
  }
  return scale;
}

std::string FakeKubeClient::NowTimestampLocked() const { return FormatRfc3339(clock_->WallNow()); }

std::string FakeKubeClient::NamespaceFor(const ResourceRef& ref, std::string_view ns,
                                         const Object& object) const {
  if (!ref.namespaced) return "";
  if (!ns.empty()) return std::string(ns);
  return MetaString(object, "namespace");
}

FakeKubeClient::ScalePaths FakeKubeClient::ScalePathsLocked(const ResourceRef& ref) const {
  auto it = scale_paths_.find({ref.group, ref.resource});
  if (it != scale_paths_.end()) return it->second;
  return {"/spec/replicas", "/status/replicas", ""};
}

void FakeKubeClient::EmitLocked(const ResourceRef& ref, std::string_view ns, WatchEvent::Type type,
                                Object old_object, Object object) {
  changes_.push_back(Change{rv_, ref.group, ref.resource, std::string(ns), type,
                            std::move(old_object), std::move(object)});
  // Bounded history, as etcd compacts: watches further behind than this get 410.
  while (changes_.size() > kMaxHistory) {
    compacted_rv_ = changes_.front().rv;
    changes_.pop_front();
  }
  changed_.notify_all();
}

StatusOr<Object> FakeKubeClient::CreateLocked(const ResourceRef& ref, std::string_view ns_arg,
                                              Object object, bool keep_status) {
  if (!object.is_object()) return InvalidObject("object is not a JSON object");
  if (!object.contains("metadata") || !object["metadata"].is_object()) {
    object["metadata"] = json::object();
  }
  json& meta = object["metadata"];
  std::string ns = NamespaceFor(ref, ns_arg, object);
  if (ref.namespaced && ns.empty()) return InvalidObject("a namespace is required");
  std::string object_ns = MetaString(object, "namespace");
  if (ref.namespaced && !object_ns.empty() && object_ns != ns) {
    return InvalidObject("the namespace of the object does not match the request");
  }
  std::string name = MetaString(object, "name");
  if (name.empty()) {
    std::string prefix = MetaString(object, "generateName");
    if (prefix.empty()) return InvalidObject("metadata.name or generateName is required");
    char suffix[24];
    std::snprintf(suffix, sizeof(suffix), "%05lld", static_cast<long long>(++name_counter_));
    name = prefix + suffix;
  }
  Key key{ref.group, ref.resource, ns, name};
  if (objects_.count(key) != 0) {
    return AlreadyExistsError(ref.resource + " \"" + name + "\" already exists");
  }
  if (!object.contains("apiVersion")) object["apiVersion"] = ref.ApiVersion();
  if (!object.contains("kind") && !ref.kind.empty()) object["kind"] = ref.kind;
  meta["name"] = name;
  if (ref.namespaced) {
    meta["namespace"] = ns;
  } else {
    meta.erase("namespace");
  }
  char uid[48];
  std::snprintf(uid, sizeof(uid), "00000000-0000-4000-8000-%012lld",
                static_cast<long long>(++uid_counter_));
  meta["uid"] = uid;
  meta["creationTimestamp"] = NowTimestampLocked();
  meta["generation"] = 1;
  meta.erase("deletionTimestamp");
  meta["resourceVersion"] = std::to_string(++rv_);
  if (!keep_status) object.erase("status");
  objects_[key] = object;
  EmitLocked(ref, ns, WatchEvent::Type::kAdded, nullptr, object);
  return object;
}

Object FakeKubeClient::CommitLocked(const ResourceRef& ref, const Key& key, const Object& current,
                                    Object next) {
  if (Comparable(next) == Comparable(current)) return current;
  json& meta = next["metadata"];
  int64_t generation = Meta(current).value("generation", int64_t{1});
  bool deleting_now = Meta(next).contains("deletionTimestamp") &&
                      !Meta(current).contains("deletionTimestamp");
  if (SpecPart(next) != SpecPart(current) || deleting_now) ++generation;
  meta["generation"] = generation;
  meta["resourceVersion"] = std::to_string(++rv_);
  objects_[key] = next;
  EmitLocked(ref, std::get<2>(key), WatchEvent::Type::kModified, current, next);
  return next;
}

void FakeKubeClient::RemoveLocked(const ResourceRef& ref, const Key& key,
                                  std::optional<PropagationPolicy> policy) {
  auto it = objects_.find(key);
  if (it == objects_.end()) return;
  Object gone = std::move(it->second);
  objects_.erase(it);
  gone["metadata"]["resourceVersion"] = std::to_string(++rv_);
  EmitLocked(ref, std::get<2>(key), WatchEvent::Type::kDeleted, gone, gone);

  // The garbage collector's part: dependents go too (or are only un-owned with kOrphan).
  std::string uid = MetaString(gone, "uid");
  std::vector<Key> dependents;
  for (const auto& [k, obj] : objects_) {
    if (OwnedBy(obj, uid)) dependents.push_back(k);
  }
  for (const Key& k : dependents) {
    auto dep = objects_.find(k);
    if (dep == objects_.end()) continue;
    ResourceRef dep_ref{std::get<0>(k), "", std::get<1>(k), "", !std::get<2>(k).empty()};
    Object current = dep->second;
    if (policy == PropagationPolicy::kOrphan) {
      Object next = current;
      json& refs = next["metadata"]["ownerReferences"];
      json kept = json::array();
      for (const json& r : refs) {
        if (r.value("uid", "") != uid) kept.push_back(r);
      }
      refs = kept;
      CommitLocked(dep_ref, k, current, std::move(next));
    } else if (HasFinalizers(current)) {
      if (!Meta(current).contains("deletionTimestamp")) {
        Object next = current;
        next["metadata"]["deletionTimestamp"] = NowTimestampLocked();
        CommitLocked(dep_ref, k, current, std::move(next));
      }
    } else {
      RemoveLocked(dep_ref, k, PropagationPolicy::kBackground);
    }
  }
}

StatusOr<Object> FakeKubeClient::WriteExistingLocked(const ResourceRef& ref, std::string_view ns,
                                                     std::string_view name, Object next,
                                                     std::string_view subresource) {
  Key key{ref.group, ref.resource, std::string(ns), std::string(name)};
  auto it = objects_.find(key);
  if (it == objects_.end()) {
    return NotFoundError(ref.resource + " \"" + std::string(name) + "\" not found");
  }
  const Object current = it->second;
  if (!next.is_object()) return InvalidObject("object is not a JSON object");
  std::string want_rv = MetaString(next, "resourceVersion");
  if (!want_rv.empty() && want_rv != MetaString(current, "resourceVersion")) {
    return ConflictError("Operation cannot be fulfilled on " + ref.resource + " \"" +
                         std::string(name) +
                         "\": the object has been modified; please apply your changes to the "
                         "latest version and try again");
  }
  std::string next_name = MetaString(next, "name");
  if (!next_name.empty() && next_name != name) {
    return InvalidObject("metadata.name does not match the request");
  }

  Object result;
  if (subresource == "status") {
    result = current;
    if (next.contains("status")) {
      result["status"] = next["status"];
    } else {
      result.erase("status");
    }
  } else if (subresource.empty()) {
    result = std::move(next);
    if (current.contains("status")) {
      result["status"] = current["status"];
    } else {
      result.erase("status");
    }
    json& meta = result["metadata"];
    if (!meta.is_object()) meta = json::object();
    // Fields the server owns.
    for (const char* field : {"uid", "creationTimestamp", "deletionTimestamp", "generation"}) {
      const json& cur_meta = Meta(current);
      if (cur_meta.contains(field)) {
        meta[field] = cur_meta[field];
      } else {
        meta.erase(field);
      }
    }
    meta["name"] = std::string(name);
    if (ref.namespaced) meta["namespace"] = std::string(ns);
    meta["resourceVersion"] = MetaString(current, "resourceVersion");
    if (!result.contains("apiVersion")) result["apiVersion"] = current.value("apiVersion", "");
    if (!result.contains("kind") && current.contains("kind")) result["kind"] = current["kind"];
  } else {
    return NotFoundError("subresource \"" + std::string(subresource) + "\" not found");
  }

  // The last finalizer removed from an object being deleted: it goes now.
  if (Meta(result).contains("deletionTimestamp") && !HasFinalizers(result)) {
    Object committed = CommitLocked(ref, key, current, result);
    RemoveLocked(ref, key, PropagationPolicy::kBackground);
    return committed;
  }
  return CommitLocked(ref, key, current, std::move(result));
}

// ---------------------------------------------------------------------------------------------
// KubeClient

StatusOr<Object> FakeKubeClient::Get(const ResourceRef& ref, std::string_view ns_arg,
                                     std::string_view name, std::string_view subresource) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<int>(Verb::kGet)];
  std::string ns = ref.namespaced ? std::string(ns_arg) : "";
  auto finish = [&](StatusOr<Object> r) {
    RecordLocked(Verb::kGet, ref, ns, name, subresource, std::nullopt, nullptr,
                 r.ok() ? StatusCode::kOk : r.status().code());
    return r;
  };
  if (auto injected = TakeInjectionLocked(Verb::kGet, ref, name)) return finish(*injected);
  if (ref.namespaced && ns.empty()) return finish(InvalidObject("a namespace is required"));
  auto it = objects_.find(Key{ref.group, ref.resource, ns, std::string(name)});
  if (it == objects_.end()) {
    return finish(NotFoundError(ref.resource + " \"" + std::string(name) + "\" not found"));
  }
  if (subresource.empty() || subresource == "status") return finish(it->second);
  if (subresource == "scale") return finish(ScaleOfLocked(ref, it->second));
  return finish(NotFoundError("subresource \"" + std::string(subresource) + "\" not found"));
}

StatusOr<ListResult> FakeKubeClient::List(const ResourceRef& ref, std::string_view ns_arg,
                                          const ListOptions& options) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<int>(Verb::kList)];
  std::string ns = ref.namespaced ? std::string(ns_arg) : "";
  auto finish = [&](StatusOr<ListResult> r) {
    RecordLocked(Verb::kList, ref, ns, "", "", std::nullopt, nullptr,
                 r.ok() ? StatusCode::kOk : r.status().code());
    return r;
  };
  if (auto injected = TakeInjectionLocked(Verb::kList, ref, "")) return finish(*injected);
  auto labels = LabelSelector::Parse(options.label_selector);
  if (!labels.ok()) return finish(labels.status());
  auto fields = FieldSelector::Parse(options.field_selector);
  if (!fields.ok()) return finish(fields.status());

  // Continue tokens are "<namespace>/<name>" of the last item returned.
  Key start{ref.group, ref.resource, "", ""};
  bool after_start = false;
  if (!options.continue_token.empty()) {
    size_t slash = options.continue_token.find('/');
    if (slash == std::string::npos) return finish(InvalidObject("malformed continue token"));
    start = Key{ref.group, ref.resource, options.continue_token.substr(0, slash),
                options.continue_token.substr(slash + 1)};
    after_start = true;
  }
  bool one_page = options.limit > 0 && options.single_page;
  ListResult result;
  result.resource_version = std::to_string(rv_);
  for (auto it = after_start ? objects_.upper_bound(start) : objects_.lower_bound(start);
       it != objects_.end(); ++it) {
    const auto& [group, resource, obj_ns, obj_name] = it->first;
    if (group != ref.group || resource != ref.resource) break;
    if (!ns.empty() && obj_ns != ns) continue;
    if (!labels->Matches(Meta(it->second).value("labels", json()))) continue;
    if (!fields->Matches(it->second)) continue;
    if (one_page && static_cast<int64_t>(result.items.size()) == options.limit) {
      const Object& last = result.items.back();
      result.continue_token = MetaString(last, "namespace") + "/" + MetaString(last, "name");
      break;
    }
    result.items.push_back(it->second);
  }
  return finish(std::move(result));
}

StatusOr<Object> FakeKubeClient::Create(const ResourceRef& ref, std::string_view ns,
                                        const Object& object) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<int>(Verb::kCreate)];
  std::string name = object.is_object() ? MetaString(object, "name") : "";
  StatusOr<Object> result = [&]() -> StatusOr<Object> {
    if (auto injected = TakeInjectionLocked(Verb::kCreate, ref, name)) return *injected;
    return CreateLocked(ref, ns, object, /*keep_status=*/false);
  }();
  if (result.ok()) name = MetaString(*result, "name");
  RecordLocked(Verb::kCreate, ref, NamespaceFor(ref, ns, object), name, "", std::nullopt, object,
               result.ok() ? StatusCode::kOk : result.status().code());
  return result;
}

StatusOr<Object> FakeKubeClient::Update(const ResourceRef& ref, std::string_view ns_arg,
                                        const Object& object, std::string_view subresource) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<int>(Verb::kUpdate)];
  std::string ns = object.is_object() ? NamespaceFor(ref, ns_arg, object) : "";
  std::string name = object.is_object() ? MetaString(object, "name") : "";
  StatusOr<Object> result = [&]() -> StatusOr<Object> {
    if (auto injected = TakeInjectionLocked(Verb::kUpdate, ref, name)) return *injected;
    if (name.empty()) return InvalidObject("metadata.name is required");
    if (ref.namespaced && ns.empty()) return InvalidObject("a namespace is required");
    if (subresource == "scale") {
      auto it = objects_.find(Key{ref.group, ref.resource, ns, name});
      if (it == objects_.end()) return NotFoundError(ref.resource + " \"" + name + "\" not found");
      Object next = it->second;
      next["metadata"]["resourceVersion"] = MetaString(object, "resourceVersion");
      if (!object.contains(json::json_pointer("/spec/replicas"))) {
        return InvalidObject("scale.spec.replicas is required");
      }
      next[json::json_pointer(ScalePathsLocked(ref).spec)] = object["spec"]["replicas"];
      auto written = WriteExistingLocked(ref, ns, name, std::move(next), "");
      if (!written.ok()) return written;
      return ScaleOfLocked(ref, *written);
    }
    return WriteExistingLocked(ref, ns, name, object, subresource);
  }();
  RecordLocked(Verb::kUpdate, ref, ns, name, subresource, std::nullopt, object,
               result.ok() ? StatusCode::kOk : result.status().code());
  return result;
}

StatusOr<Object> FakeKubeClient::Patch(const ResourceRef& ref, std::string_view ns_arg,
                                       std::string_view name, PatchType type, const Object& body,
                                       const PatchOptions& options, std::string_view subresource) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<int>(Verb::kPatch)];
  std::string ns = ref.namespaced ? std::string(ns_arg) : "";
  StatusOr<Object> result = [&]() -> StatusOr<Object> {
    if (auto injected = TakeInjectionLocked(Verb::kPatch, ref, name)) return *injected;
    if (ref.namespaced && ns.empty()) return InvalidObject("a namespace is required");
    auto it = objects_.find(Key{ref.group, ref.resource, ns, std::string(name)});
    if (it == objects_.end()) {
      if (type == PatchType::kApply && subresource.empty()) {
        Object object = body;
        if (object.is_object()) object["metadata"]["name"] = std::string(name);
        return CreateLocked(ref, ns, std::move(object), /*keep_status=*/false);
      }
      return NotFoundError(ref.resource + " \"" + std::string(name) + "\" not found");
    }
    Object target = it->second;
    if (subresource == "scale") {
      return InvalidObject("the fake does not patch the scale subresource; use Update");
    }
    try {
      switch (type) {
        case PatchType::kMerge:
        case PatchType::kStrategicMerge:
        case PatchType::kApply:
          if (!body.is_object()) return InvalidObject("patch body is not a JSON object");
          target.merge_patch(body);
          break;
        case PatchType::kJson:
          if (!body.is_array()) return InvalidObject("JSON patch body is not an array");
          target = target.patch(body);
          break;
      }
    } catch (const json::exception& e) {
      return InvalidArgumentError(std::string("patch failed: ") + e.what());
    }
    // A patch carries the live resourceVersion unless the body set one (then it is checked).
    if (type == PatchType::kApply && body.is_object() &&
        !body.contains(json::json_pointer("/metadata/resourceVersion"))) {
      target["metadata"]["resourceVersion"] = MetaString(it->second, "resourceVersion");
    }
    return WriteExistingLocked(ref, ns, name, std::move(target), subresource);
  }();
  (void)options;
  RecordLocked(Verb::kPatch, ref, ns, name, subresource, type, body,
               result.ok() ? StatusCode::kOk : result.status().code());
  return result;
}

Status FakeKubeClient::Delete(const ResourceRef& ref, std::string_view ns_arg,
                              std::string_view name, const DeleteOptions& options) {
  std::lock_guard lock(mu_);
  ++calls_[static_cast<int>(Verb::kDelete)];
  std::string ns = ref.namespaced ? std::string(ns_arg) : "";
  Status status = [&]() -> Status {
    if (auto injected = TakeInjectionLocked(Verb::kDelete, ref, name)) return *injected;
    Key key{ref.group, ref.resource, ns, std::string(name)};
    auto it = objects_.find(key);
    if (it == objects_.end()) {
      return NotFoundError(ref.resource + " \"" + std::string(name) + "\" not found");
    }
    const Object current = it->second;
    if (options.precondition_uid && *options.precondition_uid != MetaString(current, "uid")) {
      return ConflictError("Precondition failed: UID in precondition: " +
                           *options.precondition_uid + ", UID in object meta: " +
                           MetaString(current, "uid"));
    }
    if (options.precondition_resource_version &&
        *options.precondition_resource_version != MetaString(current, "resourceVersion")) {
      return ConflictError("Precondition failed: ResourceVersion in precondition: " +
                           *options.precondition_resource_version);
    }
    if (HasFinalizers(current)) {
      if (!Meta(current).contains("deletionTimestamp")) {
        Object next = current;
        next["metadata"]["deletionTimestamp"] = NowTimestampLocked();
        next["metadata"]["deletionGracePeriodSeconds"] = 0;
        CommitLocked(ref, key, current, std::move(next));
      }
      return Status::Ok();
    }
    RemoveLocked(ref, key, options.propagation);
    return Status::Ok();
  }();
  RecordLocked(Verb::kDelete, ref, ns, name, "", std::nullopt, nullptr, status.code());
  return status;
}

Status FakeKubeClient::Watch(const ResourceRef& ref, std::string_view ns_arg,
                             const WatchOptions& options,
                             const std::function<bool(const WatchEvent&)>& on_event,
                             std::stop_token stop) {
  std::unique_lock lock(mu_);
  ++calls_[static_cast<int>(Verb::kWatch)];
  std::string ns = ref.namespaced ? std::string(ns_arg) : "";
  auto fail = [&](Status s) {
    RecordLocked(Verb::kWatch, ref, ns, "", "", std::nullopt, nullptr, s.code());
    return s;
  };
  if (auto injected = TakeInjectionLocked(Verb::kWatch, ref, "")) return fail(*injected);
  auto labels = LabelSelector::Parse(options.label_selector);
  if (!labels.ok()) return fail(labels.status());
  auto fields = FieldSelector::Parse(options.field_selector);
  if (!fields.ok()) return fail(fields.status());
  int64_t pos = rv_;
  if (!options.resource_version.empty() && options.resource_version != "0") {
    bool ok;
    pos = ParseRv(options.resource_version, &ok);
    if (!ok) return fail(InvalidObject("malformed resourceVersion"));
    if (pos < compacted_rv_) {
      return fail(OutOfRangeError("too old resource version: " + options.resource_version +
                                  " (" + std::to_string(compacted_rv_) + ")"));
    }
  }
  RecordLocked(Verb::kWatch, ref, ns, "", "", std::nullopt, nullptr, StatusCode::kOk);

  auto matches = [&](const json& object) {
    if (object.is_null()) return false;
    return labels->Matches(Meta(object).value("labels", json())) && fields->Matches(object);
  };
  std::vector<WatchEvent> pending;
  if (options.resource_version == "0") {
    // "Any" resourceVersion: the current state as synthetic ADDED events, then changes.
    for (const auto& [key, obj] : objects_) {
      if (std::get<0>(key) != ref.group || std::get<1>(key) != ref.resource) continue;
      if (!ns.empty() && std::get<2>(key) != ns) continue;
      if (matches(obj)) pending.push_back({WatchEvent::Type::kAdded, obj});
    }
  }

  ++active_watches_;
  changed_.notify_all();
  int64_t seen_close = close_generation_;
  int64_t seen_bookmark = bookmark_generation_;
  Status result;
  while (true) {
    if (pending.empty()) {
      changed_.wait(lock, stop, [&] {
        return (!changes_.empty() && changes_.back().rv > pos) || pos < compacted_rv_ ||
               close_generation_ != seen_close || bookmark_generation_ != seen_bookmark;
      });
      if (stop.stop_requested()) break;
      if (close_generation_ != seen_close) {
        result = close_status_;
        if (result.code() == StatusCode::kOutOfRange) {
          pending.push_back({WatchEvent::Type::kError,
                             json{{"kind", "Status"},
                                  {"apiVersion", "v1"},
                                  {"status", "Failure"},
                                  {"reason", "Expired"},
                                  {"code", 410},
                                  {"message", result.message()}}});
        }
        lock.unlock();
        for (const WatchEvent& e : pending) on_event(e);
        lock.lock();
        break;
      }
      if (pos < compacted_rv_) {
        result = OutOfRangeError("watch fell behind a compaction");
        break;
      }
      auto first = std::partition_point(changes_.begin(), changes_.end(),
                                        [&](const Change& c) { return c.rv <= pos; });
      for (auto it = first; it != changes_.end(); ++it) {
        pos = it->rv;
        if (it->group != ref.group || it->resource != ref.resource) continue;
        if (!ns.empty() && it->ns != ns) continue;
        bool was = matches(it->old_object);
        bool is = matches(it->object);
        switch (it->type) {
          case WatchEvent::Type::kAdded:
            if (is) pending.push_back({WatchEvent::Type::kAdded, it->object});
            break;
          case WatchEvent::Type::kModified:
            if (was && is) pending.push_back({WatchEvent::Type::kModified, it->object});
            if (!was && is) pending.push_back({WatchEvent::Type::kAdded, it->object});
            if (was && !is) pending.push_back({WatchEvent::Type::kDeleted, it->object});
            break;
          case WatchEvent::Type::kDeleted:
            if (was) pending.push_back({WatchEvent::Type::kDeleted, it->object});
            break;
          default:
            break;
        }
      }
      if (bookmark_generation_ != seen_bookmark) {
        seen_bookmark = bookmark_generation_;
        if (options.allow_bookmarks) {
          json bookmark = {{"apiVersion", ref.ApiVersion()}, {"kind", ref.kind}};
          bookmark["metadata"]["resourceVersion"] = std::to_string(pos);
          pending.push_back({WatchEvent::Type::kBookmark, bookmark});
        }
      }
    }
    std::vector<WatchEvent> batch;
    batch.swap(pending);
    lock.unlock();
    bool keep_going = true;
    for (const WatchEvent& e : batch) {
      if (!on_event(e)) {
        keep_going = false;
        break;
      }
    }
    lock.lock();
    if (!keep_going) break;
  }
  --active_watches_;
  changed_.notify_all();
  return result;
}

// ---------------------------------------------------------------------------------------------
// test controls

Object FakeKubeClient::Seed(const ResourceRef& ref, const Object& object) {
  std::lock_guard lock(mu_);
  std::string ns = NamespaceFor(ref, "", object);
  std::string name = MetaString(object, "name");
  Key key{ref.group, ref.resource, ns, name};
  auto it = objects_.find(key);
  if (it == objects_.end()) {
    auto created = CreateLocked(ref, ns, object, /*keep_status=*/true);
    return created.ok() ? *created : json(nullptr);
  }
  Object next = object;
  const Object current = it->second;
  if (!next.contains("apiVersion")) next["apiVersion"] = ref.ApiVersion();
  if (!next.contains("kind") && !ref.kind.empty()) next["kind"] = ref.kind;
  for (const char* field : {"uid", "creationTimestamp"}) {
    next["metadata"][field] = Meta(current).value(field, "");
  }
  next["metadata"]["generation"] = Meta(current).value("generation", 1);
  return CommitLocked(ref, key, current, std::move(next));
}

std::optional<Object> FakeKubeClient::Peek(const ResourceRef& ref, std::string_view ns,
                                           std::string_view name) const {
  std::lock_guard lock(mu_);
  auto it = objects_.find(
      Key{ref.group, ref.resource, ref.namespaced ? std::string(ns) : "", std::string(name)});
  if (it == objects_.end()) return std::nullopt;
  return it->second;
}

std::vector<Object> FakeKubeClient::Objects(const ResourceRef& ref, std::string_view ns) const {
  std::lock_guard lock(mu_);
  std::vector<Object> out;
  for (auto it = objects_.lower_bound(Key{ref.group, ref.resource, "", ""}); it != objects_.end();
       ++it) {
    if (std::get<0>(it->first) != ref.group || std::get<1>(it->first) != ref.resource) break;
    if (!ns.empty() && std::get<2>(it->first) != ns) continue;
    out.push_back(it->second);
  }
  return out;
}

void FakeKubeClient::InjectError(Verb verb, Status status, int times,
                                 std::optional<ResourceRef> only_ref, std::string only_name) {
  std::lock_guard lock(mu_);
  if (times <= 0) return;
  injections_.push_back(
      Injection{verb, std::move(status), times, std::move(only_ref), std::move(only_name)});
}

void FakeKubeClient::ClearInjectedErrors() {
  std::lock_guard lock(mu_);
  injections_.clear();
}

int64_t FakeKubeClient::CallCount(Verb verb) const {
  std::lock_guard lock(mu_);
  return calls_[static_cast<int>(verb)];
}

int64_t FakeKubeClient::WriteCount() const {
  std::lock_guard lock(mu_);
  return calls_[static_cast<int>(Verb::kCreate)] + calls_[static_cast<int>(Verb::kUpdate)] +
         calls_[static_cast<int>(Verb::kPatch)] + calls_[static_cast<int>(Verb::kDelete)];
}

void FakeKubeClient::ResetCounts() {
  std::lock_guard lock(mu_);
  calls_.fill(0);
}

std::vector<FakeKubeClient::Request> FakeKubeClient::Requests() const {
  std::lock_guard lock(mu_);
  return requests_;
}

void FakeKubeClient::ClearRequests() {
  std::lock_guard lock(mu_);
  requests_.clear();
}

int64_t FakeKubeClient::ResourceVersion() const {
  std::lock_guard lock(mu_);
  return rv_;
}

void FakeKubeClient::Compact() {
  std::lock_guard lock(mu_);
  compacted_rv_ = rv_;
  // Watches still behind this point end with OutOfRange; the history itself is dropped.
  changes_.clear();
  changed_.notify_all();
}

void FakeKubeClient::CloseWatches(Status status) {
  std::lock_guard lock(mu_);
  close_status_ = std::move(status);
  ++close_generation_;
  changed_.notify_all();
}

void FakeKubeClient::SendBookmark() {
  std::lock_guard lock(mu_);
  ++bookmark_generation_;
  changed_.notify_all();
}

int FakeKubeClient::ActiveWatches() const {
  std::lock_guard lock(mu_);
  return active_watches_;
}

bool FakeKubeClient::AwaitActiveWatches(int n, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return changed_.wait_for(lock, timeout, [&] { return active_watches_ >= n; });
}

void FakeKubeClient::SetScalePaths(const ResourceRef& ref, std::string spec_replicas_pointer,
                                   std::string status_replicas_pointer,
                                   std::string selector_pointer) {
  std::lock_guard lock(mu_);
  scale_paths_[{ref.group, ref.resource}] =
      ScalePaths{std::move(spec_replicas_pointer), std::move(status_replicas_pointer),
                 std::move(selector_pointer)};
}

}  // namespace kvcache::kube
