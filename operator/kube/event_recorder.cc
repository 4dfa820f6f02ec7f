#include "kube/event_recorder.h"

#include <cstdio>

#include "kube/leader_elector.h"  // FormatMicroTime

namespace kvcache::kube {
namespace {

using json = nlohmann::json;

}  // namespace

EventRecorder::EventRecorder(KubeClient& client, EventRecorderOptions options, Clock& clock)
    : client_(client), options_(std::move(options)), clock_(clock) {}

EventRecorder::~EventRecorder() { Flush(); }

int64_t EventRecorder::Writes() const {
  std::lock_guard lock(mu_);
  return writes_;
}

Status EventRecorder::WriteSeriesLocked(Series& series) {
  json patch = {{"series", {{"count", series.count}, {"lastObservedTime", series.last_observed}}}};
  ++writes_;
  auto result = client_.Patch(kEventResource, series.event_ns, series.event_name,
                              PatchType::kMerge, patch);
  series.last_written = clock_.Now();
  if (result.ok()) series.written_count = series.count;
  return result.ok() ? Status::Ok() : result.status();
}

Status EventRecorder::Record(const Object& regarding, const std::string& type,
                             const std::string& reason, const std::string& action,
                             const std::string& note) {
  std::string ns = MetaString(regarding, "namespace");
  std::string event_ns = ns.empty() ? "default" : ns;
  std::string name = MetaString(regarding, "name");
  std::string uid = MetaString(regarding, "uid");
  std::string kind = regarding.value("kind", "");
  Key key{uid.empty() ? kind + "/" + ns + "/" + name : uid, type, reason, action, note, event_ns};
  Clock::TimePoint now = clock_.Now();
  std::string now_text = FormatMicroTime(clock_.WallNow());

  std::lock_guard lock(mu_);
  auto it = series_.find(key);
  if (it != series_.end() && now - it->second.first_seen < options_.aggregation_window) {
    Series& series = it->second;
    ++series.count;
    series.last_observed = now_text;
    // The first repeat is written at once (it turns the Event into a series); later ones at
    // most once per flush interval.
    if (series.written_count == 1 || now - series.last_written >= options_.series_flush_interval) {
      return WriteSeriesLocked(series);
    }
    return Status::Ok();
  }
  if (it != series_.end()) series_.erase(it);

  // Names as client-go makes them: <object>.<hex nanoseconds>, unique per occurrence.
  char suffix[32];
  std::snprintf(suffix, sizeof(suffix), ".%llx",
                static_cast<unsigned long long>(
                    std::chrono::duration_cast<std::chrono::nanoseconds>(
                        clock_.WallNow().time_since_epoch())
                        .count()));
  std::string event_name = (name.empty() ? "event" : name) + suffix;
  json regarding_ref = {{"apiVersion", regarding.value("apiVersion", "")},
                        {"kind", kind},
                        {"name", name}};
  if (!ns.empty()) regarding_ref["namespace"] = ns;
  if (!uid.empty()) regarding_ref["uid"] = uid;
  if (std::string rv = MetaString(regarding, "resourceVersion"); !rv.empty()) {
    regarding_ref["resourceVersion"] = rv;
  }
  json event = {{"apiVersion", kEventResource.ApiVersion()},
                {"kind", "Event"},
                {"metadata", {{"name", event_name}, {"namespace", event_ns}}},
                {"eventTime", now_text},
                {"reportingController", options_.reporting_controller},
                {"reportingInstance", options_.reporting_instance.empty()
                                          ? options_.reporting_controller
                                          : options_.reporting_instance},
                {"action", action},
                {"reason", reason},
                {"regarding", regarding_ref},
                {"note", note.substr(0, 1024)},  // the API server's limit on note
                {"type", type}};
  ++writes_;
  auto created = client_.Create(kEventResource, event_ns, event);
  if (!created.ok()) return created.status();
  Series series;
  series.event_name = event_name;
  series.event_ns = event_ns;
  series.first_seen = now;
  series.last_written = now;
  series.last_observed = now_text;
  series_.emplace(key, std::move(series));
  // Forget series whose window has passed, so the map stays small.
  for (auto s = series_.begin(); s != series_.end();) {
    if (now - s->second.first_seen >= options_.aggregation_window &&
        s->second.written_count == s->second.count) {
      s = series_.erase(s);
    } else {
      ++s;
    }
  }
  return Status::Ok();
}

void EventRecorder::Flush() {
  std::lock_guard lock(mu_);
  for (auto& [key, series] : series_) {
    if (series.count != series.written_count) (void)WriteSeriesLocked(series);
  }
}

}  // namespace kvcache::kube
