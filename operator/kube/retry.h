// RetryOnConflict: client-go's retry.RetryOnConflict. Runs `attempt` (which must re-read the
// object each time) again while it returns Conflict, up to `attempts` times with a short
// growing pause (10 ms, 20 ms, ...). Returns the last Status.
//
// Thread safety: a function; `attempt` runs on the caller's thread.
#pragma once

#include <functional>

#include "kube/clock.h"
#include "protocol/status.h"

namespace kvcache::kube {

inline Status RetryOnConflict(const std::function<Status()>& attempt, int attempts = 5,
                              Clock& clock = SystemClock::Instance()) {
  Status status;
  auto pause = std::chrono::milliseconds(10);
  for (int i = 0; i < attempts; ++i) {
    status = attempt();
    if (status.code() != StatusCode::kConflict) return status;
    if (i + 1 < attempts) clock.SleepFor(pause, {});
    pause *= 2;
  }
  return status;
}

}  // namespace kvcache::kube
