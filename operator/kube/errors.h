// The one translation from Kubernetes API answers (HTTP code + metav1.Status body) to Status,
// and what a caller may do about each error. Used by RestKubeClient for every response and for
// watch ERROR events; nothing else in the operator looks at HTTP codes.
//
//   HTTP            Status code          caller's move
//   404             kNotFound            done / create
//   409 AlreadyExists  kAlreadyExists    get and update instead
//   409 (other)     kConflict            re-read and retry (optimistic concurrency)
//   410             kOutOfRange          resourceVersion too old: relist
//   400, 422, other 4xx  kInvalidArgument  fix the request; never retried
//   401             kUnauthenticated     credentials (a rotated token is re-read on the next call)
//   403             kPermissionDenied    RBAC; never retried
//   429             kResourceExhausted   retriable, honour Retry-After (done inside the client)
//   5xx, transport  kUnavailable         retriable with backoff (503 + Retry-After inside client)
//
// Thread safety: pure functions.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "protocol/status.h"

namespace kvcache::kube {

// Maps an HTTP answer to a Status. `body` is the response body (a metav1.Status JSON when the
// API server produced it; anything else is quoted in the message). OK for 2xx.
Status StatusFromHttp(int http_code, std::string_view body);
// Same for a metav1.Status object (a watch ERROR event's object).
Status StatusFromApiStatus(const nlohmann::json& status_object);

// True when the same request may simply be sent again later (after backoff): Unavailable and
// ResourceExhausted. Conflict needs a fresh read first and OutOfRange a relist, so both are
// false here.
bool IsRetriable(const Status& status);

// The Retry-After header: delta-seconds ("3") or an HTTP-date. nullopt when absent/malformed.
// `now` is only used for the HTTP-date form.
std::optional<std::chrono::seconds> ParseRetryAfter(
    std::string_view header,
    std::chrono::system_clock::time_point now = std::chrono::system_clock::now());

}  // namespace kvcache::kube
