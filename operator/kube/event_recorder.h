// EventRecorder: Kubernetes Events (events.k8s.io/v1) about the objects the operator manages,
// aggregated the way client-go's events library does so a reconcile loop cannot flood the API
// server: the first occurrence of (object, type, reason, action, note) creates an Event; repeats
// within the aggregation window (6 min) only count up locally and are written as the Event's
// `series` {count, lastObservedTime} at most once per series_flush_interval (30 s); after the
// window a new Event is created. Writes happen on the caller's thread (each is one API call at
// most); failures are returned and otherwise ignored — events are best effort.
//
// Thread safety: every method may be called from any thread concurrently.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "kube/clock.h"
#include "kube/kube_client.h"

namespace kvcache::kube {

inline const ResourceRef kEventResource{"events.k8s.io", "v1", "events", "Event", true};

struct EventRecorderOptions {
  std::string reporting_controller = "kvcache.io/operator";
  std::string reporting_instance;  // pod name
  Clock::Duration aggregation_window = std::chrono::minutes(6);
  Clock::Duration series_flush_interval = std::chrono::seconds(30);
};

class EventRecorder {
 public:
  EventRecorder(KubeClient& client, EventRecorderOptions options,
                Clock& clock = SystemClock::Instance());
  ~EventRecorder();  // Flush().

  // `regarding` is the object (apiVersion, kind, metadata.{name,namespace,uid,resourceVersion}
  // are used). `type` is "Normal" or "Warning"; `reason` CamelCase ("PrimaryFailedOver");
  // `action` what the operator did ("Failover"). Returns the API error of a write, if any.
  Status Record(const Object& regarding, const std::string& type, const std::string& reason,
                const std::string& action, const std::string& note);
  // Writes pending series counts now.
  void Flush();

  // API writes made (creates + patches), for tests and measurements.
  int64_t Writes() const;

 private:
  using Key = std::tuple<std::string, std::string, std::string, std::string, std::string,
                         std::string>;  // uid/kind+ns+name, type, reason, action, note, ns
  struct Series {
    std::string event_name;
    std::string event_ns;
    int64_t count = 1;            // occurrences so far
    int64_t written_count = 1;    // what the API server has
    Clock::TimePoint first_seen;
    Clock::TimePoint last_written;
    std::string last_observed;    // MicroTime of the latest occurrence
  };
  Status WriteSeriesLocked(Series& series);

  KubeClient& client_;
  const EventRecorderOptions options_;
  Clock& clock_;
  mutable std::mutex mu_;
  std::map<Key, Series> series_;
  int64_t writes_ = 0;
};

}  // namespace kvcache::kube
